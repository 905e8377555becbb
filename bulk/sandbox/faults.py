"""Fault injection and rate limiting, shared by every sandbox dialect.

:class:`Faults` is the run-time half of :class:`~bulk.sandbox.config.SandboxConfig`: it holds
the mutable :class:`FaultSettings`, the seeded RNG that decides which request fails, and the
:class:`RateLimiter`. The request pipeline in :mod:`bulk.sandbox.core` consults it; a dialect
never needs to call it directly.

Fault decisions are independent rolls of one ``random.Random(seed)``, made in this order, and
only for a rate above zero (so a config without faults draws no random numbers)::

    throttle_rate -> answer 429 before handling (after the rate limiter admitted it)
    fail_rate  -> answer 500 before handling
    drop_rate  -> close the connection before handling (no answer at all)
    slow_rate  -> add slow_ms to the request's delay
    lose_rate  -> (successful POST only) commit, then close the connection

The same seed and the same request sequence give the same faults; concurrent clients make
the sequence, and so the outcome, vary.

:class:`RequestCounters` keeps what the pipeline saw and did, for ``/_sandbox/state``.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from email.utils import formatdate
from typing import Any

from bulk.sandbox.config import SandboxConfig, SandboxConfigError, check_fault_settings

__all__ = ["FaultSettings", "Faults", "RateLimiter", "RequestCounters"]


@dataclass(slots=True)
class FaultSettings:
    """The fault and limit settings of a running server (see ``SandboxConfig`` for meanings)."""

    latency_ms: float
    fail_rate: float
    drop_rate: float
    lose_rate: float
    slow_rate: float
    slow_ms: float
    rate_limit: float | None
    read_rate_limit: float | None
    burst: float | None
    throttle_rate: float
    retry_after_override: float | str | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class RateLimiter:
    """A token bucket per (credential, kind), kind being read or write.

    Algorithm: the token bucket (https://en.wikipedia.org/wiki/Token_bucket). Each bucket
    holds up to ``capacity`` tokens and starts full; it gains ``rate`` tokens per second of
    elapsed time, never beyond ``capacity``; a request takes one token or, if less than one
    is left, is refused with the whole seconds until one token will be there
    (``ceil((1 - tokens) / rate)``, at least 1): the ``Retry-After`` to send with the 429.
    ``capacity`` is ``burst`` when set, else ``max(1, rate)`` (one second's worth). Refused
    requests take nothing, so a client honouring ``Retry-After`` is served on its return.

    ``clock`` returns seconds (monotonic); tests pass a fake one.

    Hand-written rather than the ``limits`` package (5.8, evaluated for issue 12): ``limits``
    offers fixed, moving and sliding windows, no token bucket. A window admits its whole
    amount again only when it rolls, where this bucket admits one request every ``1/rate``
    seconds after a burst (5/s, burst 5, a request every 0.1 s for 2 s: the bucket admits 14,
    the moving window 10, none between 0.5 s and 1 s); and a window is an integer amount per
    whole seconds, so a burst
    over a fractional window (rate 10/s with burst 3, the benchmark's ``limit`` scenario's
    burst 6 at R/s) or a rate like anny's 1.667/s cannot be stated. It reads ``time.time()``
    (no fake clock; a wall-clock step changes its verdicts), and its async memory storage
    costs 11-81 us per request against 1.3-2.4 us here (100,000 requests, 4 credentials x
    2 kinds, unlimited and 100/s; 2026-12-01, 2-core shared machine).
    """

    __slots__ = ("_buckets", "_clock", "_limits")

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        # kind (True = write) -> (rate, capacity), or absent when unlimited
        self._limits: dict[bool, tuple[float, float]] = {}
        # (credential, kind) -> [tokens, time of last refill]
        self._buckets: dict[tuple[str, bool], list[float]] = {}

    def configure(self, *, write_rate: float | None, read_rate: float | None,
                  burst: float | None) -> None:
        """Set the limits; every bucket starts again full."""
        self._limits = {
            kind: (rate, burst if burst is not None else max(1.0, rate))
            for kind, rate in ((True, write_rate), (False, read_rate))
            if rate is not None
        }
        self.refill()

    def refill(self) -> None:
        """Every bucket starts again full."""
        self._buckets.clear()

    def acquire(self, credential: str, write: bool) -> int:
        """Take a token. Return 0 when the request may go on, else the Retry-After seconds."""
        limit = self._limits.get(write)
        if limit is None:
            return 0
        rate, capacity = limit
        now = self._clock()
        bucket = self._buckets.get((credential, write))
        if bucket is None:
            self._buckets[(credential, write)] = [capacity - 1.0, now]
            return 0
        tokens = min(capacity, bucket[0] + (now - bucket[1]) * rate)
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return 0
        bucket[0] = tokens
        return max(1, math.ceil((1.0 - tokens) / rate))


class Faults:
    """Fault settings + seeded RNG + rate limiter of one dialect; changeable at run time."""

    __slots__ = ("limiter", "rng", "settings")

    def __init__(self, config: SandboxConfig, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = FaultSettings(**config.fault_settings())
        self.rng = random.Random(config.seed)
        self.limiter = RateLimiter(clock=clock)
        self._configure_limiter()

    def update(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Apply ``changes`` (a subset of the settings) all at once, or none if one is invalid.

        Raises :class:`SandboxConfigError` listing every invalid value. Returns the new
        settings. Changing a limit refills every bucket.
        """
        problems = check_fault_settings(changes)
        if problems:
            raise SandboxConfigError("; ".join(problems))
        for name, value in changes.items():
            setattr(self.settings, name, value)
        if changes.keys() & {"rate_limit", "read_rate_limit", "burst"}:
            self._configure_limiter()
        return self.settings.as_dict()

    def retry_after(self, computed: int) -> str:
        """The ``Retry-After`` header of a 429: ``retry_after_override`` when set, else ``computed``."""
        override = self.settings.retry_after_override
        if override is None:
            return str(computed)
        if isinstance(override, str):  # "http-date:+N"
            return formatdate(time.time() + float(override.partition(":")[2]), usegmt=True)
        return str(int(override)) if float(override).is_integer() else str(override)

    def hit(self, rate: float) -> bool:
        """Roll the RNG for a fault of probability ``rate`` (no roll when it is zero)."""
        return rate > 0 and self.rng.random() < rate

    def _configure_limiter(self) -> None:
        s = self.settings
        self.limiter.configure(write_rate=s.rate_limit, read_rate=s.read_rate_limit, burst=s.burst)


class RequestCounters:
    """Counts of API requests (control routes excluded), for ``/_sandbox/state``."""

    __slots__ = ("by_status", "dropped", "in_flight", "lost", "slowed", "total")

    def __init__(self) -> None:
        # A gauge, not a count: how many API requests are in the server's hands right now
        # (received, handler not yet returned or failed), whatever became of their senders.
        # ``clear()`` leaves it alone, or requests in flight at a reset would take it below 0.
        self.in_flight = 0
        self.clear()

    def clear(self) -> None:
        self.total = 0  # every API request received
        self.by_status: dict[int, int] = {}  # answers sent, by status
        self.dropped = 0  # closed before handling (drop_rate)
        self.lost = 0  # handled, committed, then closed (lose_rate)
        self.slowed = 0  # delayed by slow_ms (slow_rate)

    def snapshot(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "by_status": {str(status): n for status, n in sorted(self.by_status.items())},
            "throttled": self.by_status.get(429, 0),
            "dropped": self.dropped,
            "lost": self.lost,
            "slowed": self.slowed,
            "in_flight": self.in_flight,
        }
