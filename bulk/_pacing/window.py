"""The bound on the requests in flight: what the pace needs, and AIMD after a 429.

A server that stalls and then takes a whole batch at one instant (nginx stamps every request
of one event-loop turn with one clock reading, and its ``limit_req`` counts them as sent at
once) sees every request that was in flight meanwhile as one burst, however evenly they were
sent: at 1,000/s a stall of 10 ms with 10 requests on their way is a burst of 10 to a bucket
of 5. So the requests in flight are bounded too (an :class:`anyio.CapacityLimiter`):

- A paced run (``start``: the lanes' burst) starts at ``start`` in flight and grows by one
  whenever an answer comes while the window was full of requests past the limiter (the
  pace needs more in flight than the window lets: the latency is longer), like TCP's slow
  start: doubling per round trip while too small, not growing once the pace, not the window,
  holds the requests back. It settles at about rate x latency + 1.
- A new throttling episode caps the requests in flight at half of those in flight then; in a
  paced run the cap grows again by demand from ``CLIMB_EVERY`` s after the cut; in an unpaced
  one it stays until ``CLIMB_EVERY`` s after the episode's end, then grows by one every
  ``CLIMB_EVERY`` s (the window is gone once back at the run's concurrency).
"""

from __future__ import annotations

import anyio

from .lane import CLIMB_EVERY

__all__ = ["Window"]


class Window:
    """``limiter`` is None while no cap applies (an unpaced run without a 429: one attribute check)."""

    def __init__(self, concurrency: int, start: int | None = None) -> None:
        self.concurrency = concurrency
        #: the cap follows what the pace needs (a paced run) rather than the clock
        self.by_demand = start is not None and start < concurrency
        self.limiter: anyio.CapacityLimiter | None = None
        if start is not None and start < concurrency:
            self.limiter = anyio.CapacityLimiter(start)
        self._climb_at = 0.0

    async def enter(self, borrower: object, now: float) -> anyio.CapacityLimiter:
        """Take a place for ``borrower`` (give it back with :meth:`leave`)."""
        limiter = self.limiter
        assert limiter is not None
        if not self.by_demand and now >= self._climb_at:  # additive increase
            self._climb_at = now + CLIMB_EVERY
            if limiter.total_tokens + 1 >= self.concurrency:
                limiter.total_tokens = self.concurrency
                self.limiter = None  # back to the concurrency cap alone
            else:
                limiter.total_tokens += 1
        await limiter.acquire_on_behalf_of(borrower)
        return limiter

    def leave(self, limiter: anyio.CapacityLimiter, borrower: object, inflight: int, now: float) -> None:
        """``borrower``'s request is answered; ``inflight``: the requests past the limiter
        until now, this one included. A full window grows by one (see the module)."""
        if (self.by_demand and limiter is self.limiter and now >= self._climb_at
                and inflight >= limiter.total_tokens and limiter.total_tokens < self.concurrency):
            limiter.total_tokens += 1
        limiter.release_on_behalf_of(borrower)

    def narrow(self, inflight: int, episode_end: float, now: float) -> None:
        """A new throttling episode: at most half of ``inflight`` may be in flight. A paced
        run's window grows back by demand from ``CLIMB_EVERY`` after ``now`` (held until the
        episode's end, a window of 1 or 2 caps the rate at 1 or 2 per round trip: on a busy
        client at 1,000/s that was a third of R for the whole Retry-After); an unpaced one
        by one per ``CLIMB_EVERY`` from the episode's end."""
        size = max(1, min(inflight, self.concurrency) // 2)
        if self.limiter is None:
            self.limiter = anyio.CapacityLimiter(size)
        elif size < self.limiter.total_tokens:
            self.limiter.total_tokens = size
        self._climb_at = (now if self.by_demand else episode_end) + CLIMB_EVERY
