"""Shared pacing for every request of a run: rate limits, one concurrency cap, 429 adaptation.

- Rate: one :class:`Lane` per request kind (``read``/``write``) from the target's documented
  limits, or one ``"*"`` lane for ``--rate`` (a kind without a lane of its own takes the
  ``"*"`` one, and both apply when there are both). A lane is an :class:`aiolimiter.AsyncLimiter`
  configured for even spacing: ``AsyncLimiter(k, k / R)`` is a leaky bucket that drains at
  exactly R requests per second and holds at most ``k`` (:func:`burst_for`), so at most ``k``
  requests ever go back to back: a server with a small bucket (nginx ``limit_req burst=5``)
  never sees more than it accepts, and a late request can still catch up ``k - 1`` slots.
- A 429 adapts the pace instead of restarting everyone at once (AIMD). The request that got
  it waits its ``Retry-After`` and goes through the limiter again; the lanes' rate is cut
  multiplicatively (``CUT``, once per throttling episode: the answers to requests that were
  already on their way do not cut again) and climbs back additively (``CLIMB`` x R every
  ``CLIMB_EVERY`` s). A request at a cut rate takes ``R / rate`` of the bucket's capacity, so
  the burst shrinks with the rate. When a request sent *after* the cut is throttled within
  the episode (slowing down was not enough: a fixed window is spent, a quota), every worker
  pauses until ``Retry-After`` on one :class:`anyio.Event` set by a loop timer (no polling);
  a request that passed the limiter while a pause began passes it again after the pause, so
  the paused workers never leave together: at most the (shrunk) burst goes at once.
- The requests in flight are AIMD-bounded too: a 429 (a new episode) caps them at half of
  those in flight then (an :class:`anyio.CapacityLimiter` window, +1 every ``CLIMB_EVERY``
  s, gone once back at the concurrency). A server that stalls and then takes a whole batch at
  one instant (nginx stamps a batch with one clock reading) sees at most that many at once.
- ``X-RateLimit-Remaining`` / ``-Reset`` (where an API sends them; ``-Limit`` is informative):
  with nothing remaining the run pauses until the reset; with little remaining, the lane's
  rate is lowered to spread what is left over the time to the reset.
- A wait longer than ``max_wait`` stops the run resumably (:class:`QuotaExhausted`) instead
  of burning the day on 429s.
- Health: when no request has succeeded for ``give_up_after`` seconds while errors keep
  coming, the run stops resumably (:class:`ApiUnavailable`) instead of retrying forever.

aiolimiter is asyncio-only and binds to the running loop: create the Pacer inside the run.
Times are the loop's clock (``loop.time()``), so tests can drive it with a virtual clock.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime

import anyio
from aiolimiter import AsyncLimiter

from .errors import ApiUnavailable, QuotaExhausted

__all__ = ["Backoff", "Lane", "Pacer", "burst_for", "parse_rate_limit_reset", "parse_retry_after"]

#: Most requests a lane lets go back to back (measured: see README, Performance; a server
#: bucket of 5 takes it with room for the network's jitter).
MAX_BURST = 4
#: The burst is this many seconds of traffic, between 2 and MAX_BURST requests (2: a request
#: the event loop wakes late is made up by the next one instead of lost), and 1 under
#: 2 requests/s, where a server's bucket may hold only one.
BURST_SECONDS = 0.004
#: AIMD: a 429 multiplies the lane's rate by CUT; it climbs back by CLIMB x R every CLIMB_EVERY s.
#: Gentle and quick, because at a small server bucket a sporadic 429 is the network's jitter
#: (a 5-request bucket at 1,000/s tolerates 5 ms), and anything worse pauses everyone anyway.
CUT = 0.9
CLIMB = 0.02
CLIMB_EVERY = 0.1
#: The lowest rate a cut goes to, as a share of R (the Retry-After pauses do the rest).
FLOOR = 0.05
#: A limit at or above this many requests per second (``--rate 1e9``: "no limit") gets no
#: lane: no client sends that fast, so it could never make a request wait, and skipping it
#: takes the limiter's bookkeeping off every request. A 429 still pauses and narrows.
UNBOUNDED = 1e6


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
        when = when.replace(tzinfo=dt.UTC)
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


def parse_rate_limit_reset(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds until an ``X-RateLimit-Reset``: delta-seconds (IETF draft), or a Unix time
    (GitHub and others) when the number is too large to be a delay."""
    if not value:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    if number > 1e9:  # seconds since 1970, not a delay of 31 years
        number -= time.time() if now is None else now
    return max(0.0, number)


def burst_for(rate: float) -> int:
    """The requests a lane at ``rate`` per second lets go back to back."""
    if rate < 2:
        return 1
    return max(2, min(MAX_BURST, int(rate * BURST_SECONDS)))


class Backoff:
    """Exponential backoff with full jitter (AWS architecture blog, "Exponential Backoff And Jitter")."""

    def __init__(self, base: float = 0.2, cap: float = 10.0, rng: random.Random | None = None) -> None:
        self.base, self.cap = base, cap
        self._rng = rng or random.Random()

    def delay(self, attempt: int) -> float:
        return self._rng.uniform(0, min(self.cap, self.base * 2 ** (attempt - 1)))


class Lane:
    """One rate limit of ``rate`` requests per second: an evenly spacing AsyncLimiter, and the
    AIMD state that slows it after a 429. ``weight`` = R / current rate: the bucket capacity
    one request takes (1.0 at full rate)."""

    __slots__ = ("_climb_at", "burst", "limiter", "rate", "weight")

    def __init__(self, rate: float, burst: int | None = None) -> None:
        self.rate = rate
        self.burst = burst_for(rate) if burst is None else burst
        self.limiter = AsyncLimiter(self.burst, self.burst / rate)
        self.weight = 1.0
        self._climb_at = 0.0

    @property
    def current_rate(self) -> float:
        return self.rate / self.weight

    async def acquire(self, now: float) -> None:
        weight = self.weight
        if weight == 1.0:
            await self.limiter.acquire()
            return
        if now >= self._climb_at:  # additive increase, one step per CLIMB_EVERY s without a cut
            steps = 1 + int((now - self._climb_at) / CLIMB_EVERY)
            rate = min(self.rate, self.rate / weight + steps * CLIMB * self.rate)
            self.weight = weight = self.rate / rate if rate < self.rate else 1.0
            self._climb_at = now + CLIMB_EVERY
        while weight > 0:  # a weight above the bucket's capacity is taken in parts
            part = min(weight, float(self.burst))
            await self.limiter.acquire(part)
            weight -= part

    def cut(self, resume_at: float) -> None:
        """A 429: lower the rate; it starts climbing back ``CLIMB_EVERY`` after ``resume_at``."""
        self.slow_to(max(self.current_rate * CUT, self.rate * FLOOR), resume_at)

    def slow_to(self, rate: float, resume_at: float) -> None:
        """Pace at ``rate`` (if lower than now), climbing back from ``resume_at`` on."""
        if 0 < rate < self.current_rate:
            self.weight = self.rate / rate
            self._climb_at = resume_at + CLIMB_EVERY


class Pacer:
    """Create inside the run: aiolimiter and the anyio primitives are bound to the running loop."""

    def __init__(
        self,
        *,
        limits: Mapping[str, float],
        concurrency: int,
        give_up_after: float,
        max_wait: float,
        burst: int | None = None,
    ) -> None:
        self._lanes = {kind: Lane(rate, burst) for kind, rate in limits.items() if rate < UNBOUNDED}
        self._shared = self._lanes.get("*")
        self._unpaced = not self._lanes  # no rate to keep: a free slot is all a request needs
        # fast_acquire: a free slot is taken without yielding to the event loop (the default
        # costs one extra loop turn per request; the request's own I/O yields anyway).
        self._cap = anyio.Semaphore(concurrency, fast_acquire=True)
        self.give_up_after = give_up_after
        self.max_wait = max_wait
        self._loop = asyncio.get_running_loop()
        self._resume: anyio.Event | None = None  # set while paused: every worker waits on it
        self._resume_at = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self.concurrency = concurrency
        self._window: anyio.CapacityLimiter | None = None  # after a 429: fewer in flight
        self._window_climb_at = 0.0
        self._inflight = 0
        self._cut_at = float("-inf")  # loop time of the last cut: the throttling episode's start
        self._episode_end = float("-inf")  # ... and its end (the cut's Retry-After)
        self._last_ok = time.monotonic()
        self.last_error = ""
        #: monotonic time of the first retryable failure since the last success (None: healthy)
        self.failing_since: float | None = None

    def lane(self, kind: str) -> Lane | None:
        return self._lanes.get(kind, self._shared)

    def slot(self, kind: str) -> _Slot:
        """Hold one of the run's request slots, after any pause and the rate limit.

        ``async with pacer.slot("write") as sent_at: ...``: ``sent_at`` is the loop time the
        request was let go at (pass it to :meth:`throttled`). A plain class, not ``@asynccontextmanager``:
        this runs once per request, and the generator machinery cost more than the rest.
        """
        return _Slot(self, kind)

    async def _acquire(self, kind: str, slot: _Slot) -> None:
        cap = self._cap
        try:
            cap.acquire_nowait()  # the common case: a free slot, taken without any await
        except anyio.WouldBlock:
            await cap.acquire()
        try:
            if self._window is not None:
                await self._enter_window(slot)
            lane = self._lanes.get(kind, self._shared)
            shared = self._shared if lane is not self._shared else None
            while True:
                while self._resume is not None:
                    await self._resume.wait()
                if lane is not None:
                    await lane.acquire(self._loop.time())
                if shared is not None:
                    await shared.acquire(self._loop.time())
                if self._resume is None:
                    return
                # A pause began while we waited for the limiter: take the limiter again after
                # it, or every worker held here would send at once when it ends.
        except BaseException:
            if slot.window is not None:
                slot.window.release_on_behalf_of(slot)
                slot.window = None
            cap.release()
            raise

    async def _enter_window(self, slot: _Slot) -> None:
        window = self._window
        assert window is not None
        now = self._loop.time()
        if now >= self._window_climb_at:  # additive increase
            self._window_climb_at = now + CLIMB_EVERY
            if window.total_tokens + 1 >= self.concurrency:
                window.total_tokens = self.concurrency
                self._window = None  # back to the concurrency cap alone
            else:
                window.total_tokens += 1
        await window.acquire_on_behalf_of(slot)
        slot.window = window

    def _narrow(self) -> None:
        """A new throttling episode: at most half of those in flight now may be in flight."""
        size = max(1, min(self._inflight, self.concurrency) // 2)
        if self._window is None:
            self._window = anyio.CapacityLimiter(size)
        elif size < self._window.total_tokens:
            self._window.total_tokens = size
        self._window_climb_at = self._episode_end + CLIMB_EVERY

    @property
    def paused(self) -> bool:
        return self._resume is not None

    def _check_wait(self, wait: float) -> None:
        if wait > self.max_wait:
            resume = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=wait)
            at = resume.isoformat(timespec="seconds")
            raise QuotaExhausted(
                f"the API asked to wait {wait:.0f} s (until {at}), longer than --max-wait "
                f"{self.max_wait:.0f} s: resume after {at} with the same command",
                resume_at=at,
            )

    def _pause(self, wait: float) -> float:
        """Hold every new request for ``wait`` seconds (a longer pause already set wins)."""
        self._check_wait(wait)
        until = self._loop.time() + wait
        if self._resume is None:
            self._resume = anyio.Event()
        elif until <= self._resume_at:
            return self._resume_at
        if self._timer is not None:
            self._timer.cancel()
        self._resume_at = until
        self._timer = self._loop.call_at(until, self._end_pause)
        return until

    def _end_pause(self) -> None:
        event, self._resume, self._timer = self._resume, None, None
        if event is not None:
            event.set()

    def throttled(self, retry_after: float | None, kind: str | None = None, sent_at: float | None = None) -> float:
        """A 429 to a request of ``kind`` that left at ``sent_at`` (what its slot returned).

        Returns the seconds that request must wait before it is sent again (0.0 when every
        worker pauses, so it waits with them). ``retry_after`` None (no hint) counts as 1 s; a
        wait longer than ``max_wait`` raises :class:`QuotaExhausted`. Without ``sent_at`` (not
        known which pace it was sent at) every worker pauses.
        """
        wait = 1.0 if retry_after is None else max(retry_after, 0.01)
        self._check_health("throttled (429) without a success")
        now = self._loop.time()
        if sent_at is not None and sent_at < self._cut_at:
            self._check_wait(wait)
            return wait  # on its way before we slowed down: expected, it alone waits
        if sent_at is None or now < self._episode_end:
            # Sent at the lowered pace and still throttled (or not known): everyone waits.
            resume_at = self._pause(wait)
            self._cut(kind, resume_at)
            return 0.0
        self._check_wait(wait)
        self._cut(kind, now + wait)
        return wait

    def _cut(self, kind: str | None, resume_at: float) -> None:
        """Slow the lanes that paced the throttled request (every lane when not known which)."""
        self._cut_at = self._loop.time()
        self._episode_end = max(self._episode_end, resume_at)
        self._narrow()
        lanes = self._lanes.values() if kind is None else (self.lane(kind), self._shared)
        for lane in {id(x): x for x in lanes if x is not None}.values():
            lane.cut(resume_at)

    def observe(self, kind: str, headers: Mapping[str, str]) -> None:
        """Read an answer's ``X-RateLimit-Remaining`` / ``X-RateLimit-Reset``, where sent."""
        remaining = headers.get("X-RateLimit-Remaining")
        if remaining is None:
            return
        reset = parse_rate_limit_reset(headers.get("X-RateLimit-Reset"))
        if reset is None:
            return  # no window to spread the rest over (Coperniq: its adapter reads Remaining)
        try:
            left = int(remaining)
        except ValueError:
            return
        if left <= 0:
            self._pause(max(reset, 0.01))
            return
        lane = self.lane(kind)
        if lane is not None and reset > 0:
            lane.slow_to(left / reset, self._loop.time())

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

    __slots__ = ("_kind", "_pacer", "window")

    def __init__(self, pacer: Pacer, kind: str) -> None:
        self._pacer, self._kind = pacer, kind
        self.window: anyio.CapacityLimiter | None = None

    async def __aenter__(self) -> float:
        """The loop time the request was let go at (for :meth:`Pacer.throttled`)."""
        pacer = self._pacer
        if pacer._unpaced and pacer._window is None and pacer._resume is None:
            # Nothing to wait for but a slot: what _acquire would do, without its coroutine.
            try:
                pacer._cap.acquire_nowait()
            except anyio.WouldBlock:
                await pacer._acquire(self._kind, self)
        else:
            await pacer._acquire(self._kind, self)
        pacer._inflight += 1
        return pacer._loop.time()

    async def __aexit__(self, *exc: object) -> None:
        pacer = self._pacer
        pacer._inflight -= 1
        if self.window is not None:
            self.window.release_on_behalf_of(self)
        pacer._cap.release()
