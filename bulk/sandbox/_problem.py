"""The framework's error kinds: :class:`Problem` (what the pipeline answers on a dialect's
behalf, each mapped by the dialect to a status and body) and :class:`SandboxProblem` (raised by
a handler to answer with one), plus :data:`WRITE_METHODS`, the methods that count as writes
(for the read-only credential and the rate limiter's per-kind buckets)."""

from __future__ import annotations

import enum

__all__ = ["WRITE_METHODS", "Problem", "SandboxProblem"]

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class Problem(enum.Enum):
    """The errors the framework answers on a dialect's behalf; each maps to a status + body."""

    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    MALFORMED_JSON = "malformed_json"
    THROTTLED = "throttled"
    SERVER_ERROR = "server_error"
    IDEMPOTENCY_MISMATCH = "idempotency_mismatch"
    IDEMPOTENCY_IN_FLIGHT = "idempotency_in_flight"
    INVALID_IDEMPOTENCY_KEY = "invalid_idempotency_key"


class SandboxProblem(Exception):
    """Raised by a handler (or the framework) to answer with the dialect's ``kind`` error."""

    def __init__(self, kind: Problem) -> None:
        super().__init__(kind.value)
        self.kind = kind
