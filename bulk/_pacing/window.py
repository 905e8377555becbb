"""The bound on the requests in flight: what the pace needs, and AIMD after a 429.

A server that stalls and then takes a whole batch at one instant (nginx stamps every request
of one event-loop turn with one clock reading, and its ``limit_req`` counts them as sent at
once) sees every request that was in flight meanwhile as one burst, however evenly they were
sent: at 1,000/s a stall of 10 ms with 10 requests on their way is a burst of 10 to a bucket
of 5. So the requests in flight are bounded too (the size of the run's :class:`~.gate.Gate`,
which holds ``--concurrency`` otherwise):

- A paced run (``start``: the lanes' burst) starts at ``start`` in flight and grows by one
  whenever an answer comes while the window was full of requests past the limiter (the
  pace needs more in flight than the window lets: the latency is longer), like TCP's slow
  start: doubling per round trip while too small, not growing once the pace, not the window,
  holds the requests back. It settles at about rate x latency + 1, and comes back down
  when the latency does (``PERIOD``). It grows no further than the start plus twice what
  the pace needs at the typical latency (``rate`` x the running median of the round trips,
  :meth:`Window.leave`): a server, or a client, that stalls makes every request of the
  stall look slow, and a window grown by stalls let the next stall bunch all of it (at
  1,000/s, load 8 on 2 cores: windows of 8-17, against 4 the pace needs on loopback).
- A new throttling episode caps the requests in flight at half of those in flight then (a
  paced run: never under the lanes' burst, see :class:`Window`); in a paced run the cap
  grows again by demand from ``CLIMB_EVERY`` s after the cut; in an unpaced one it stays
  until ``CLIMB_EVERY`` s after the episode's end, then grows by one every ``CLIMB_EVERY`` s
  as answers come (the window is gone once back at the run's concurrency).
"""

from __future__ import annotations

from .gate import Gate
from .lane import CLIMB_EVERY

__all__ = ["PERIOD", "Window"]

#: A paced window comes down to what was in flight at most over this many seconds (plus one).
PERIOD = 0.5
#: The running median of the round trips moves by this factor per answer (up when the answer
#: took longer, down when shorter): a median in log terms, ~50 answers from 1 to 10 ms.
STEP = 1.05


class Window:
    """Sizes :attr:`gate`; ``active`` is False while the size is just the concurrency (an
    unpaced run without a 429: :meth:`leave` has nothing to do, one attribute check)."""

    __slots__ = ("_climb_at", "_peak", "_period_end", "active", "by_demand", "concurrency", "floor",
                 "gate", "rate", "rtt")

    def __init__(self, concurrency: int, start: int | None = None, rate: float = 0.0) -> None:
        self.concurrency = concurrency
        self.rate = rate  # the requests per second of the pace (a paced run)
        self.rtt = 0.0  # the running median of the round trips, s (0: none yet)
        #: the cap follows what the pace needs (a paced run) rather than the clock
        self.by_demand = start is not None and start < concurrency
        self.gate = Gate(start if start is not None and self.by_demand else concurrency)
        # A paced run never narrows below the lanes' burst: a stall can bunch at most that
        # many in flight, what the lanes send back to back anyway (a server that takes less
        # is the lanes' to respect), while a window under what the pace needs (at 1,000/s and
        # 3 ms answers, 4) cost a third of R until it grew back, for every jitter 429.
        self.floor = start if start is not None and self.by_demand else 1
        self.active = self.by_demand
        self._climb_at = 0.0
        self._peak = 0  # the most in flight at an answer since _period_end (a paced run)
        self._period_end = 0.0

    def leave(self, inflight: int, now: float, sent_at: float) -> None:
        """A request sent at ``sent_at`` is answered at ``now`` (call before its place is given
        back); ``inflight``: the requests past the limiter until now, this one included. Grows
        the window (see the module): a paced one by one when it was full (up to what the pace
        needs at the median round trip), an unpaced one by one per ``CLIMB_EVERY``."""
        gate = self.gate
        if self.by_demand:
            rtt, took = self.rtt, now - sent_at
            self.rtt = took if not rtt else rtt * STEP if took > rtt else rtt / STEP
            self._follow(inflight, now)
        if gate.size >= self.concurrency:
            self.active = self.by_demand  # an unpaced run is back to the concurrency cap alone
            return
        if now < self._climb_at:
            return
        if self.by_demand:
            if inflight >= gate.size and gate.size < self.floor + 2 * self.rate * self.rtt:
                gate.resize(gate.size + 1)
            return
        self._climb_at = now + CLIMB_EVERY  # additive increase
        gate.resize(gate.size + 1)

    def _follow(self, inflight: int, now: float) -> None:
        """Down as well as up: a paced window that was never full during a ``PERIOD`` comes
        down to the most in flight then, plus one (at least the floor). Grown by a latency
        spike and left there, it let a later stall of the server bunch all of it: at 1,000/s
        a window of 10 is twice what nginx's burst of 5 takes at once."""
        if inflight > self._peak:
            self._peak = inflight
        if now >= self._period_end:
            size = max(self.floor, self._peak + 1)
            if size < self.gate.size:
                self.gate.resize(size)
            self._peak, self._period_end = 0, now + PERIOD

    def narrow(self, inflight: int, episode_end: float, now: float) -> None:
        """A new throttling episode: at most half of ``inflight`` may be in flight (in a paced
        run, at least the lanes' burst). A paced
        run's window grows back by demand from ``CLIMB_EVERY`` after ``now`` (held until the
        episode's end, a window of 1 or 2 caps the rate at 1 or 2 per round trip: on a busy
        client at 1,000/s that was a third of R for the whole Retry-After); an unpaced one
        by one per ``CLIMB_EVERY`` from the episode's end."""
        size = max(self.floor, min(inflight, self.concurrency) // 2)
        if size < self.gate.size:
            self.gate.resize(size)
        self.active = True
        self._climb_at = (now if self.by_demand else episode_end) + CLIMB_EVERY
