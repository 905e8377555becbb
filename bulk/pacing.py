"""Shared pacing for every request of a run: rate limits, one concurrency cap, 429 adaptation.

- Rate: one :class:`Lane` per request kind (``read``/``write``) from the target's documented
  limits, or one ``"*"`` lane for ``--rate`` (a kind without a lane of its own takes the
  ``"*"`` one, and both apply, at one instant, when there are both). A lane is an evenly spacing
  :class:`aiolimiter.AsyncLimiter` (:mod:`bulk._pacing.lane`).
- A 429 adapts the pace instead of restarting everyone at once (AIMD). The request that got
  it waits its ``Retry-After`` and goes through the limiter again; every 429 lowers the lanes'
  rate by its share of the answers, and the rate climbs back steadily (:mod:`bulk._pacing.lane`:
  with a steady share ``f`` of sporadic 429s it settles at ``R x CLIMB / f``, R while ``f`` is
  under ``CLIMB``); 429s beyond 0.5% lower the burst (:meth:`Lane.shrink`). A 429 also
  begins or goes on with a throttling episode (:mod:`bulk._pacing.episode`): the window
  narrows, and when most answers since it began are 429s every worker pauses until
  ``Retry-After`` (:mod:`bulk._pacing.pause`), then passes the limiter again, so the paused
  workers never leave together.
- The requests in flight are bounded too (:mod:`bulk._pacing.window`): in a paced run (any lanes)
  to what the pace needs (from the burst on, growing while the latency needs more), so a server that
  stalls and then stamps a whole batch with one clock reading never sees more than that; a
  new throttling episode caps them at half of those in flight then, growing back after it.
- ``X-RateLimit-Remaining`` / ``-Reset`` (where an API sends them; ``-Limit`` is informative):
  with nothing remaining the run pauses until the reset; with little remaining, the lane's
  rate is lowered to spread what is left over the time to the reset.
- A wait longer than ``max_wait`` stops the run resumably (:class:`QuotaExhausted`).
- Health (:mod:`bulk._pacing.health`): when no request has succeeded for ``give_up_after``
  seconds while errors keep coming, the run stops resumably (:class:`ApiUnavailable`).

aiolimiter is asyncio-only and binds to the running loop: create the Pacer inside the run.
Times are the loop's clock (``loop.time()``), so tests can drive it with a virtual clock
(:mod:`bulk.testing`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from multidict import istr

from ._pacing.episode import Episodes
from ._pacing.headers import parse_rate_limit_reset, parse_retry_after
from ._pacing.health import Backoff, Health
from ._pacing.lane import (
    BURST_SECONDS,
    CLIMB,
    CLIMB_EVERY,
    FLOOR,
    MARGIN,
    MAX_BURST,
    SAMPLE,
    SLACK,
    UNBOUNDED,
    Lane,
    acquire_together,
    burst_for,
    pace_for,
    sample_for,
)
from ._pacing.pause import Pause
from ._pacing.window import Window

__all__ = [
    "BURST_SECONDS", "CLIMB", "CLIMB_EVERY", "FLOOR", "MARGIN", "MAX_BURST", "SAMPLE", "SLACK", "UNBOUNDED",
    "Backoff", "Lane", "Pacer", "burst_for", "pace_for", "parse_rate_limit_reset", "parse_retry_after", "sample_for",
]

#: The header names as multidict's ``istr`` (still plain ``str`` keys for a dict): aiohttp's
#: headers look an ``istr`` up without case-folding the name first, about a third of the cost
#: of a ``str`` name (every answer is asked for the first of them).
_REMAINING = istr("X-RateLimit-Remaining")
_RESET = istr("X-RateLimit-Reset")


class Pacer(Health):
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
        super().__init__(give_up_after)
        self._lanes = {kind: Lane(rate, burst) for kind, rate in limits.items() if rate < UNBOUNDED}
        self._shared = self._lanes.get("*")
        self._unpaced = not self._lanes  # no rate to keep: a free slot is all a request needs
        self._loop = asyncio.get_running_loop()
        self._hold = Pause(self._loop, max_wait)
        self.concurrency = concurrency
        # The lanes each kind passes, at one instant (acquire_together): its own and the "*" one.
        self._routes: dict[str, tuple[Lane, ...]] = {}
        # In flight: what the pace needs (from the smallest burst on, at the limits' rate), fewer after a 429.
        start = min(lane.burst for lane in self._lanes.values()) if self._lanes else None
        self._window = Window(concurrency, start, self._shared.rate if self._shared else sum(limits.values()))
        # One gate holds both bounds (the concurrency, or the window's size where smaller).
        self._gate = self._window.gate
        self._inflight = 0
        self._episodes = Episodes(self._hold, self._window)

    @property
    def max_wait(self) -> float:
        return self._hold.max_wait

    def lane(self, kind: str) -> Lane | None:
        return self._lanes.get(kind, self._shared)

    def _route(self, kind: str) -> tuple[Lane, ...]:
        lane = self._lanes.get(kind, self._shared)
        route = () if lane is None else (lane,) if lane is self._shared or self._shared is None \
            else (lane, self._shared)
        self._routes[kind] = route
        return route

    def slot(self, kind: str) -> _Slot:
        """Hold one of the run's request slots, after any pause and the rate limit.

        ``async with pacer.slot("write") as sent_at: ...``: ``sent_at`` is the loop time the
        request was let go at (pass it to :meth:`throttled`). The engine's sender takes the same
        steps without its two coroutines: :meth:`take` (or :meth:`enter`), then :meth:`give`.
        """
        return _Slot(self, kind)

    def take(self, kind: str) -> float | None:
        """A slot taken without waiting, when nothing stands in the way (an unpaced run, a free
        place, no pause): the loop time it was taken at, the request's ``sent_at``. None when
        the request must wait: then ``await`` :meth:`enter` instead. Either way, :meth:`give`
        it back once the request is answered (or failed). Synchronous: the common case of a
        run at ``--rate 1e9`` pays no coroutine for its slot."""
        gate = self._gate
        if self._unpaced and gate.held < gate.size and self._hold.event is None:
            gate.held += 1
            self._inflight += 1
            return self._loop.time()
        return None

    async def enter(self, kind: str) -> float:
        """Take a slot, waiting for a place, any pause and the rate limit (see :meth:`take`)."""
        await self._acquire(kind)
        self._inflight += 1
        return self._loop.time()

    def give(self, sent_at: float) -> None:
        """Give back the slot :meth:`take` or :meth:`enter` returned ``sent_at`` for: its
        request is answered (or failed, or cancelled)."""
        episodes = self._episodes
        if sent_at >= episodes.cut_at:
            episodes.answered += 1
        window = self._window
        if window.active:
            window.leave(self._inflight, self._loop.time(), sent_at)
        self._inflight -= 1
        gate = self._gate
        gate.held -= 1
        if gate.waiters:
            gate.admit()  # Gate.leave, inline

    async def _acquire(self, kind: str) -> None:
        gate = self._gate
        if gate.held < gate.size:
            gate.held += 1  # the common case: a free place, taken without any await
        else:
            await gate.enter()
        try:
            lanes = self._routes.get(kind) or self._route(kind)
            hold = self._hold
            while True:
                while hold.event is not None:
                    await hold.event.wait()
                if len(lanes) == 1:
                    lane = lanes[0]
                    limiter = lane.limiter
                    if lane.weight == 1.0:  # at full rate: what Lane.acquire does, one frame less
                        await limiter.acquire()
                    else:
                        await lane.acquire(self._loop.time())
                    if hold.event is None and lane.limiter is limiter:
                        lane.passed += 1
                        return
                elif (not lanes or await acquire_together(lanes, self._loop.time())) and hold.event is None:
                    for lane in lanes:
                        lane.passed += 1
                    return
                # A pause began while we waited for the limiter: take the limiter again after
                # it, or every worker held here would send at once when it ends. The same for a
                # lane whose burst shrank meanwhile (Lane.shrink): its new bucket counts it too.
        except BaseException:
            gate.leave()
            raise

    @property
    def paused(self) -> bool:
        return self._hold.event is not None

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
        lanes = self._lanes_of(kind)
        for lane in lanes:  # every 429 takes its share off the rate, on its way or not
            lane.cut(now)
            if sent_at is not None:  # ... and may say the server's bucket holds less than the burst
                lane.shrink(sent_at, now, lane.passed)
        return self._episodes.throttled(wait, now, sent_at, lanes, self._inflight)

    def _lanes_of(self, kind: str | None) -> list[Lane]:
        """The lanes that paced a request of ``kind`` (every lane when not known which)."""
        lanes = self._lanes.values() if kind is None else (self.lane(kind), self._shared)
        return list({id(x): x for x in lanes if x is not None}.values())

    def observe(self, kind: str, headers: Mapping[str, str]) -> None:
        """Read an answer's ``X-RateLimit-Remaining`` / ``X-RateLimit-Reset``, where sent."""
        remaining = headers.get(_REMAINING)
        if remaining is None:
            return
        reset = parse_rate_limit_reset(headers.get(_RESET))
        if reset is None:
            return  # no window to spread the rest over (Coperniq: its adapter reads Remaining)
        try:
            left = int(remaining)
        except ValueError:
            return
        if left <= 0:
            self._hold.hold(max(reset, 0.01))
            return
        lane = self.lane(kind)
        if lane is not None and reset > 0:
            lane.slow_to(left / reset, self._loop.time())


class _Slot:
    """The async context manager :meth:`Pacer.slot` returns: :meth:`Pacer.take` or
    :meth:`Pacer.enter`, then :meth:`Pacer.give`."""

    __slots__ = ("_kind", "_pacer", "sent_at")

    def __init__(self, pacer: Pacer, kind: str) -> None:
        self._pacer, self._kind = pacer, kind
        self.sent_at = 0.0

    async def __aenter__(self) -> float:
        """The loop time the request was let go at (for :meth:`Pacer.throttled`)."""
        pacer = self._pacer
        sent_at = pacer.take(self._kind)
        if sent_at is None:
            sent_at = await pacer.enter(self._kind)
        self.sent_at = sent_at
        return sent_at

    async def __aexit__(self, *exc: object) -> None:
        self._pacer.give(self.sent_at)
