"""The one exception tree of `bulk`, grouped by what the caller must do.

::

    BulkError
    ├── ConfigError          usage or configuration is wrong: fix and re-run (exit 2)
    ├── RecordError          this record cannot be created: write it to failed.ndjson, go on
    │   ├── InvalidRecord    the input line is wrong (line number, field, reason, fix)
    │   └── RecordRefused    the API refused it (4xx other than 401/403/429): status, field, message
    │       └── UnknownReference  ... because an id it references is unknown (a deleted contact)
    ├── RetryableError       try the same request again later (bounded by the retry budget)
    │   ├── Throttled        429; ``retry_after`` seconds, pauses every worker
    │   ├── ServerError      5xx
    │   └── TransportError   timeout, reset, refused; ``maybe_committed`` when the request was sent
    └── AbortRun             stop the whole run now; it is resumable (exit 3)
        ├── AuthError        401/403: check the credentials / abilities
        ├── ApiUnavailable   the API stayed down past the give-up time
        ├── QuotaExhausted   the API asked us to wait longer than we are willing to; ``resume_at``
        ├── OutputError      the run directory cannot be written (permissions, disk full)
        └── InputUnreadable  the input cannot be read again mid-run (moved, truncated)

Foreign exceptions (aiohttp, OSError, orjson) are translated into this tree at the
boundary (``bulk.transport`` for HTTP, ``bulk.outputs``/``bulk.checkpoint`` for files); only
the CLI renders them. No message here may contain a credential: callers pass the API's own
message and status, never request headers.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = [
    "AbortRun",
    "ApiUnavailable",
    "AuthError",
    "BulkError",
    "ConfigError",
    "InputUnreadable",
    "InvalidRecord",
    "OutputError",
    "QuotaExhausted",
    "RecordError",
    "RecordRefused",
    "RetryableError",
    "ServerError",
    "Throttled",
    "TransportError",
    "UnknownReference",
    "find_bulk_error",
    "redact_error",
]


class BulkError(Exception):
    """Root of every error `bulk` raises on purpose."""


class ConfigError(BulkError):
    """Bad usage or configuration; nothing was sent. Fix the command or environment."""


# --- reject this record and go on -------------------------------------------------------


class RecordError(BulkError):
    """This record cannot be created; the run goes on without it.

    ``stage`` names the step that failed (``parse``, ``customer``, ``invoice``, ``item``...).
    """

    kind = "failed"

    def __init__(self, message: str, *, stage: str = "invoice") -> None:
        super().__init__(message)
        self.message = message
        self.stage = stage


class InvalidRecord(RecordError):
    """The input line is wrong. Names the line, the field, the reason and the fix."""

    kind = "rejected"

    def __init__(self, line_no: int, field: str, reason: str, fix: str = "") -> None:
        self.line_no = line_no
        self.field = field
        self.reason = reason
        self.fix = fix
        text = f"line {line_no}: {field}: {reason}"
        if fix:
            text += f" ({fix})"
        super().__init__(text, stage="parse")


class RecordRefused(RecordError):
    """The API answered 4xx for this record; ``status``, ``field`` (the field or fields the API
    named, comma-separated; empty when it named none) and ``message`` are the API's."""

    def __init__(self, status: int, message: str, *, stage: str = "invoice", field: str = "") -> None:
        super().__init__(f"HTTP {status}: {message}", stage=stage)
        self.status = status
        self.api_message = message
        self.field = field


class UnknownReference(RecordRefused):
    """The API refused a request because an id it references is unknown to it: a customer or
    item resolved earlier (and cached in the resume file) that was deleted since.

    A target raises it (from ``classify``, or itself) for that refusal only. ``refs`` names the
    resolved ``(namespace, key)`` pairs the refused request was built from: given by the target,
    or filled in by the engine from ``job.send(..., refs=...)``. The engine then forgets those
    cached ids, runs the record's upload once more (resolving them again), and reports the
    refusal as a plain failure if it happens again.
    """

    def __init__(self, status: int, message: str, *, stage: str = "invoice", field: str = "",
                 refs: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(status, message, stage=stage, field=field)
        self.refs = refs


# --- retry ------------------------------------------------------------------------------


class RetryableError(BulkError):
    """The request may succeed if sent again later."""

    status: int | None = None
    maybe_committed = False


class Throttled(RetryableError):
    """HTTP 429. ``retry_after`` is in seconds (None when the API gave no hint)."""

    def __init__(self, message: str, *, retry_after: float | None, status: int = 429) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.retry_after = retry_after
        self.api_message = message


class ServerError(RetryableError):
    """HTTP 5xx. The server may have committed the write before failing."""

    maybe_committed = True

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.api_message = message


class TransportError(RetryableError):
    """No usable answer: timeout, connection reset or refused.

    ``maybe_committed`` is True when the request may have reached the server (so a create
    must be reconciled before it is sent again), False when it surely did not (refused).
    """

    def __init__(self, message: str, *, maybe_committed: bool, reason: str = "reset") -> None:
        super().__init__(message)
        self.maybe_committed = maybe_committed
        self.reason = reason  # reset, timeout or refused: how the benchmark counts it (bulk.latency)


# --- abort the run (resumable) ----------------------------------------------------------


class AbortRun(BulkError):
    """Stop the run now. Everything durable is kept; the same command resumes."""


class AuthError(AbortRun):
    """401/403: the credentials were refused or lack the needed ability."""

    def __init__(self, status: int, message: str, hint: str) -> None:
        # One full stop between the API's sentence and ours ("Unauthorized." is common).
        super().__init__(f"HTTP {status}: {message.rstrip('. ')}. {hint[:1].upper()}{hint[1:]}")
        self.status = status
        self.api_message = message


class ApiUnavailable(AbortRun):
    """The API kept failing (refused connections or 5xx) for longer than allowed."""


class QuotaExhausted(AbortRun):
    """The API asked us to wait until ``resume_at`` (a UTC ISO timestamp)."""

    def __init__(self, message: str, *, resume_at: str) -> None:
        super().__init__(message)
        self.resume_at = resume_at


class OutputError(AbortRun):
    """The run directory could not be written. Nothing half-written is left behind."""


class InputUnreadable(AbortRun):
    """The input could not be read again mid-run (moved, truncated, unreadable)."""


def redact_error(exc: BaseException, redact: Callable[[str], str]) -> None:
    """Redact, in place, the text of ``exc`` and of the errors chained to it (their messages
    and string attributes), before it leaves the engine to be rendered: an error built from an
    API's answer quotes that answer verbatim, and the answer may echo a credential."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc.args = tuple(redact(a) if isinstance(a, str) else a for a in exc.args)
        for name, value in list(vars(exc).items()):
            if isinstance(value, str):
                setattr(exc, name, redact(value))
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]


def find_bulk_error(group: BaseExceptionGroup) -> BulkError | None:
    """The first `BulkError` in a (nested) exception group from a task group, or None."""
    for exc in group.exceptions:
        if isinstance(exc, BulkError):
            return exc
        if isinstance(exc, BaseExceptionGroup) and (found := find_bulk_error(exc)) is not None:
            return found
    return None
