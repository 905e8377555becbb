"""Shared pacing for every request of a run: rate limits, one concurrency cap, 429 pauses.

- Rate: one aiolimiter ``AsyncLimiter`` per request kind (``read``/``write``) from the target's
  documented limits, or a single one for ``--rate``. Buckets are sized to 50 ms of traffic so
  the client never bursts a whole second's budget at once (a server counting a fixed window
  would answer 429 to such a burst).
- A 429 pauses *every* worker until ``Retry-After`` has passed, not only the one that got it.
  A wait longer than ``max_wait`` stops the run resumably (:class:`QuotaExhausted`) instead
  of burning the day on 429s.
- Health: when no request has succeeded for ``give_up_after`` seconds while errors keep
  coming, the run stops resumably (:class:`ApiUnavailable`) instead of retrying forever.
"""

from __future__ import annotations

import datetime as dt
import random
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from email.utils import parsedate_to_datetime

import anyio
from aiolimiter import AsyncLimiter

from .errors import ApiUnavailable, QuotaExhausted

__all__ = ["Pacer", "parse_retry_after", "Backoff"]


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP-date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


class Backoff:
    """Exponential backoff with full jitter (AWS architecture blog, "Exponential Backoff And Jitter")."""

    def __init__(self, base: float = 0.2, cap: float = 10.0, rng: random.Random | None = None) -> None:
        self.base, self.cap = base, cap
        self._rng = rng or random.Random()

    def delay(self, attempt: int) -> float:
        return self._rng.uniform(0, min(self.cap, self.base * 2 ** (attempt - 1)))


def _limiter(rate: float) -> AsyncLimiter:
    burst = max(1.0, rate * 0.05)
    return AsyncLimiter(burst, burst / rate)


class Pacer:
    """Create inside the run: aiolimiter and anyio primitives are bound to the running loop."""

    def __init__(
        self,
        *,
        limits: Mapping[str, float],
        concurrency: int,
        give_up_after: float,
        max_wait: float,
    ) -> None:
        self._limiters = {kind: _limiter(rate) for kind, rate in limits.items()}
        self._shared = self._limiters.get("*")
        self._cap = anyio.Semaphore(concurrency)
        self.give_up_after = give_up_after
        self.max_wait = max_wait
        self._pause_until = 0.0
        self._last_ok = time.monotonic()
        self.last_error = ""

    @asynccontextmanager
    async def slot(self, kind: str) -> AsyncIterator[None]:
        """Hold one of the run's request slots, after any pause and the rate limit."""
        async with self._cap:
            while (wait := self._pause_until - time.monotonic()) > 0:
                await anyio.sleep(wait)
            limiter = self._limiters.get(kind, self._shared)
            if limiter is not None:
                await limiter.acquire()
            if self._shared is not None and limiter is not self._shared:
                await self._shared.acquire()
            yield

    def throttled(self, retry_after: float | None) -> None:
        """Pause every worker for ``retry_after`` seconds (1 s when the API gave no hint)."""
        wait = 1.0 if retry_after is None else max(retry_after, 0.01)
        if wait > self.max_wait:
            resume = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=wait)
            at = resume.isoformat(timespec="seconds")
            raise QuotaExhausted(
                f"the API asked to wait {wait:.0f} s (until {at}), longer than --max-wait "
                f"{self.max_wait:.0f} s: run the same command again after {at}",
                resume_at=at,
            )
        self._pause_until = max(self._pause_until, time.monotonic() + wait)
        self._check_health("throttled (429) without a success")

    def ok(self) -> None:
        self._last_ok = time.monotonic()

    def succeeded_since(self, moment: float) -> bool:
        """Has any request succeeded after ``moment`` (a ``time.monotonic()`` value)?"""
        return self._last_ok > moment

    def failed(self, message: str) -> None:
        """Note a retryable failure; stop the run if nothing has succeeded for too long."""
        self.last_error = message
        self._check_health(message)

    def _check_health(self, message: str) -> None:
        silent = time.monotonic() - self._last_ok
        if silent > self.give_up_after:
            raise ApiUnavailable(
                f"no successful answer from the API for {silent:.0f} s (last: {message}); "
                "stopped so you can check it: run the same command again to resume"
            )
