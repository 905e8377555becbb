"""The AIMD bound on the requests in flight after a 429.

A new throttling episode caps the requests in flight at half of those in flight then (an
:class:`anyio.CapacityLimiter`); the cap grows by one every ``CLIMB_EVERY`` s from the end of
the episode and is gone once back at the run's concurrency. A server that stalls and then
takes a whole batch at one instant (nginx stamps a batch with one clock reading) sees at most
that many at once.
"""

from __future__ import annotations

import anyio

from .lane import CLIMB_EVERY

__all__ = ["Window"]


class Window:
    """``limiter`` is None while no cap applies (the common case: one attribute check)."""

    def __init__(self, concurrency: int) -> None:
        self.concurrency = concurrency
        self.limiter: anyio.CapacityLimiter | None = None
        self._climb_at = 0.0

    async def enter(self, borrower: object, now: float) -> anyio.CapacityLimiter:
        """Take a place for ``borrower`` (release it on the returned limiter)."""
        limiter = self.limiter
        assert limiter is not None
        if now >= self._climb_at:  # additive increase
            self._climb_at = now + CLIMB_EVERY
            if limiter.total_tokens + 1 >= self.concurrency:
                limiter.total_tokens = self.concurrency
                self.limiter = None  # back to the concurrency cap alone
            else:
                limiter.total_tokens += 1
        await limiter.acquire_on_behalf_of(borrower)
        return limiter

    def narrow(self, inflight: int, episode_end: float) -> None:
        """A new throttling episode: at most half of ``inflight`` may be in flight."""
        size = max(1, min(inflight, self.concurrency) // 2)
        if self.limiter is None:
            self.limiter = anyio.CapacityLimiter(size)
        elif size < self.limiter.total_tokens:
            self.limiter.total_tokens = size
        self._climb_at = episode_end + CLIMB_EVERY
