"""Shared pacing for every request of a run: rate limits, one concurrency cap, 429 pauses.

- Rate: one :class:`Gcra` limiter per request kind (``read``/``write``) from the target's
  documented limits, or a single one for ``--rate``. The burst allowance is 50 ms of traffic
  so the client never bursts a whole second's budget at once (a server counting a fixed
  window would answer 429 to such a burst). GCRA spaces requests exactly 1/rate apart, so a
  run holds the limit itself, not a little under it, and costs a few arithmetic operations a
  request (it replaced aiolimiter, whose bookkeeping cost more than the rest of the pacing).
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
from collections.abc import Callable, Mapping
from email.utils import parsedate_to_datetime

import anyio

from .errors import ApiUnavailable, QuotaExhausted

__all__ = ["Backoff", "Gcra", "Pacer", "parse_retry_after"]


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


class Gcra:
    """The generic cell rate algorithm, as a virtual scheduling limiter (ITU-T I.371;
    https://en.wikipedia.org/wiki/Generic_cell_rate_algorithm).

    ``rate`` requests per second, of which ``burst`` may go back to back. Each request
    reserves the next slot of a theoretical arrival time (TAT) that advances by exactly
    1/rate, and waits until that slot minus the burst tolerance. Reserving is synchronous
    and never blocks; ``clock`` returns monotonic seconds (tests pass a fake one).
    """

    __slots__ = ("_interval", "_tolerance", "_tat", "_clock")

    def __init__(self, rate: float, burst: float = 1.0, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = 1.0 / rate
        self._tolerance = (max(1.0, burst) - 1.0) * self._interval
        self._tat = 0.0
        self._clock = clock

    def reserve(self) -> float:
        """Take the next slot; return the seconds to wait before sending (0.0: now)."""
        now = self._clock()
        tat = self._tat if self._tat > now else now
        self._tat = tat + self._interval
        wait = tat - self._tolerance - now
        return wait if wait > 0.0 else 0.0


def _limiter(rate: float) -> Gcra:
    return Gcra(rate, burst=rate * 0.05)


class Pacer:
    """Create inside the run: the anyio primitives are bound to the running loop."""

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
        # fast_acquire: a free slot is taken without yielding to the event loop (the default
        # costs one extra loop turn per request; the request's own I/O yields anyway).
        self._cap = anyio.Semaphore(concurrency, fast_acquire=True)
        self.give_up_after = give_up_after
        self.max_wait = max_wait
        self._pause_until = 0.0  # monotonic time before which nothing is sent (0.0: never paused)
        self._last_ok = time.monotonic()
        self.last_error = ""
        #: monotonic time of the first retryable failure since the last success (None: healthy)
        self.failing_since: float | None = None

    def slot(self, kind: str) -> _Slot:
        """Hold one of the run's request slots, after any pause and the rate limit.

        ``async with pacer.slot("write"): ...``. A plain class, not ``@asynccontextmanager``:
        this runs once per request, and the generator machinery cost more than the rest.
        """
        return _Slot(self, kind)

    async def _acquire(self, kind: str) -> None:
        cap = self._cap
        try:
            cap.acquire_nowait()  # the common case: a free slot, taken without any await
        except anyio.WouldBlock:
            await cap.acquire()
        try:
            if self._pause_until:
                while (wait := self._pause_until - time.monotonic()) > 0:
                    await anyio.sleep(wait)
            limiter = self._limiters.get(kind, self._shared)
            if limiter is not None and (wait := limiter.reserve()):
                await anyio.sleep(wait)
            if self._shared is not None and limiter is not self._shared and (wait := self._shared.reserve()):
                await anyio.sleep(wait)
            if self._pause_until:
                while (wait := self._pause_until - time.monotonic()) > 0:  # a 429 came while we waited
                    await anyio.sleep(wait)
        except BaseException:
            cap.release()
            raise

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
        self.failing_since = None

    @property
    def last_ok(self) -> float:
        """Monotonic time of the last success (the run's start before any): the health
        check gives up ``give_up_after`` seconds after it."""
        return self._last_ok

    def succeeded_since(self, moment: float) -> bool:
        """Has any request succeeded after ``moment`` (a ``time.monotonic()`` value)?"""
        return self._last_ok > moment

    def failed(self, message: str) -> None:
        """Note a retryable failure; stop the run if nothing has succeeded for too long."""
        self.last_error = message
        if self.failing_since is None:
            self.failing_since = time.monotonic()
        self._check_health(message)

    def _check_health(self, message: str) -> None:
        silent = time.monotonic() - self._last_ok
        if silent > self.give_up_after:
            raise ApiUnavailable(
                f"no successful answer from the API for {silent:.0f} s (last: {message}); "
                "stopped so you can check it: run the same command again to resume"
            )


class _Slot:
    """The async context manager :meth:`Pacer.slot` returns."""

    __slots__ = ("_pacer", "_kind")

    def __init__(self, pacer: Pacer, kind: str) -> None:
        self._pacer, self._kind = pacer, kind

    async def __aenter__(self) -> None:
        await self._pacer._acquire(self._kind)

    async def __aexit__(self, *exc: object) -> None:
        self._pacer._cap.release()
