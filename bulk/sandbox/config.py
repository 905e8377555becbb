"""Settings of one sandbox server: frozen, keyword-only, validated on construction.

The fault and limit fields are only the *starting* values: a running server keeps its own
mutable copy (:class:`bulk.sandbox.faults.FaultSettings`) that ``POST /_sandbox/faults``
changes. Both are checked by :func:`check_fault_settings`, so a value the config refuses is
refused at run time too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeGuard

from bulk.errors import ConfigError

__all__ = ["FAULT_FIELDS", "SandboxConfig", "SandboxConfigError", "check_fault_settings"]

# The settings that may change while the server runs (POST /_sandbox/faults).
FAULT_FIELDS = (
    "latency_ms",
    "fail_rate",
    "drop_rate",
    "lose_rate",
    "slow_rate",
    "slow_ms",
    "rate_limit",
    "read_rate_limit",
    "burst",
    "throttle_rate",
    "retry_after_override",
)
_PROBABILITIES = frozenset({"fail_rate", "drop_rate", "lose_rate", "slow_rate", "throttle_rate"})
_DURATIONS = frozenset({"latency_ms", "slow_ms"})
_LIMITS = frozenset({"rate_limit", "read_rate_limit"})


class SandboxConfigError(ConfigError, ValueError):
    """A sandbox setting or target name is invalid.

    A :class:`~bulk.errors.ConfigError` for the CLI (exit 2), and a ``ValueError`` for
    library callers. The message lists every problem found, not only the first.
    """


def _is_real(value: object) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_http_date_offset(value: object) -> bool:
    if not (isinstance(value, str) and value.startswith("http-date:")):
        return False
    try:
        return math.isfinite(float(value[len("http-date:"):]))
    except ValueError:
        return False


def check_fault_settings(values: Mapping[str, object]) -> list[str]:
    """Return one message per invalid fault/limit setting in ``values`` (empty when all valid).

    Unknown names are reported too, so a typo in ``POST /_sandbox/faults`` is not ignored.
    """
    problems = []
    for name, value in values.items():
        if name in _PROBABILITIES:
            if not (_is_real(value) and 0 <= value <= 1):
                problems.append(f"{name} must be a probability between 0 and 1, got {value!r}")
        elif name in _DURATIONS:
            if not (_is_real(value) and value >= 0):
                problems.append(f"{name} must be a number of milliseconds >= 0, got {value!r}")
        elif name in _LIMITS:
            if value is not None and not (_is_real(value) and value > 0):
                problems.append(f"{name} must be requests per second > 0 or null, got {value!r}")
        elif name == "retry_after_override":
            if not (value is None or (_is_real(value) and value >= 0) or _is_http_date_offset(value)):
                problems.append("retry_after_override must be null, seconds >= 0 or \"http-date:+N\", "
                                f"got {value!r}")
        elif name == "burst":
            if value is not None and not (_is_real(value) and value >= 1):
                problems.append(f"burst must be a number >= 1 or null, got {value!r}")
        else:
            problems.append(f"unknown setting {name!r} (known: {', '.join(FAULT_FIELDS)})")
    return problems


@dataclass(frozen=True, kw_only=True, slots=True)
class SandboxConfig:
    """How a sandbox server behaves. Every field has a harmless default.

    Attributes:
        token: the one accepted secret; ``None`` accepts any non-empty credential.
        readonly_token: a second secret accepted for reads only (writes answer 403).
        rate_limit: writes (POST/PUT/PATCH/DELETE) per second per credential; ``None`` = no limit.
        read_rate_limit: reads per second per credential; ``None`` = no limit.
        burst: token-bucket capacity for both kinds; ``None`` = ``max(1, rate)``.
        latency_ms: added to every API request (simulated processing time).
        fail_rate: probability of answering 500 instead of handling the request.
        drop_rate: probability of closing the connection instead of handling the request.
        lose_rate: probability, for a successful POST, of committing and then closing the
            connection so the client never sees the answer.
        slow_rate: probability of adding ``slow_ms`` to a request (to trip client timeouts).
        slow_ms: the extra delay of a slow request.
        throttle_rate: probability of answering 429 (with Retry-After) to a request the rate
            limiter admitted: a 429 storm independent of the buckets.
        retry_after_override: the ``Retry-After`` of every 429 instead of the bucket's own
            value: seconds (``0``, ``3600``...) or ``"http-date:+N"`` for an HTTP-date N
            seconds from now (RFC 9110 section 10.2.3); ``None`` = the bucket's value (or 1
            for a ``throttle_rate`` hit).
        seed: seeds the fault RNG, so a run with the same requests sees the same faults.
        options: dialect-specific settings; each dialect documents the keys it reads.
        state: the SQLite file that keeps the stored data across restarts (created when
            absent; see ``bulk.sandbox.durable``); ``None`` = in memory only. Fault settings,
            rate-limit buckets and counters are never kept.
    """

    token: str | None = None
    readonly_token: str | None = None
    rate_limit: float | None = None
    read_rate_limit: float | None = None
    burst: float | None = None
    latency_ms: float = 0
    fail_rate: float = 0
    drop_rate: float = 0
    lose_rate: float = 0
    slow_rate: float = 0
    slow_ms: float = 30_000
    throttle_rate: float = 0
    retry_after_override: float | str | None = None
    seed: int | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    state: str | None = None

    def __post_init__(self) -> None:
        problems = check_fault_settings({name: getattr(self, name) for name in FAULT_FIELDS})
        for name in ("token", "readonly_token"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, str) and value):
                problems.append(f"{name} must be a non-empty string or None")
        if self.token is not None and self.token == self.readonly_token:
            problems.append("readonly_token must differ from token")
        seed = self.seed
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            problems.append(f"seed must be an integer or None, got {self.seed!r}")
        if self.state is not None and not (isinstance(self.state, str) and self.state):
            problems.append(f"state must be a file path or None, got {self.state!r}")
        if not isinstance(self.options, Mapping):
            problems.append("options must be a mapping")
        if problems:
            raise SandboxConfigError("invalid sandbox config: " + "; ".join(problems))
        # A read-only view, so the frozen config cannot be changed through ``options`` either.
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))

    def fault_settings(self) -> dict[str, Any]:
        """The starting values of the settings a running server may change."""
        return {name: getattr(self, name) for name in FAULT_FIELDS}
