"""What a 429 does beyond its own request's wait: the run's throttling episodes.

A 429 outside a throttling episode begins one (for its Retry-After) and narrows the window
(:mod:`.window`); within one, a 429 to a request sent after the last narrowing narrows it
again. When requests sent *after* the episode began are throttled (two at least) and most
answers to those were 429s (slowing down was not enough: a fixed window is spent, a quota),
every worker pauses until ``Retry-After`` (:mod:`.pause`); a sporadic one (a stall bunched the
requests in flight) cuts again instead. The lanes' own reaction (the rate cut, the burst's
shrink: :mod:`.lane`) is the caller's, for every 429.
"""

from __future__ import annotations

from .lane import Lane
from .pause import Pause
from .window import Window

__all__ = ["Episodes"]


class Episodes:
    """The throttling episodes of one run (a part of :class:`bulk.pacing.Pacer`).

    The pacer counts the answers itself, on its hot path: ``answered += 1`` for every answer
    to a request sent at or after :attr:`cut_at` (the episode's start)."""

    __slots__ = ("_hold", "_window", "answered", "cut_at", "end", "narrowed_at", "refused")

    def __init__(self, hold: Pause, window: Window) -> None:
        self._hold, self._window = hold, window
        self.cut_at = float("-inf")  # loop time of the last cut: the throttling episode's start
        self.end = float("-inf")  # ... and its end (the cut's Retry-After)
        self.narrowed_at = float("-inf")  # loop time the window was last narrowed
        # Answers to requests sent since the cut, and their 429s: mostly 429s is a spent limit.
        self.answered = self.refused = 0

    def throttled(self, wait: float, now: float, sent_at: float | None, lanes: list[Lane], inflight: int) -> float:
        """A 429 answered at ``now`` to a request sent at ``sent_at`` (None: not known) through
        ``lanes``, ``inflight`` requests past the limiter: the seconds that request waits
        (0.0 when every worker pauses, so it waits with them). See :meth:`bulk.pacing.Pacer.throttled`."""
        if sent_at is not None and sent_at < self.cut_at:
            self._hold.check(wait)
            return wait  # on its way before the episode began: it alone waits
        self.refused += 1
        within = now < self.end
        if sent_at is None or (within and self.refused >= 2 and 2 * self.refused > self.answered):
            # Sent since the episode began and still throttled, as most of those answered since
            # (or not known): the limit is spent, not jittered; everyone waits, then climbs back.
            # Two at least: one 429 among a single answer is no majority (aiolimiter serves the
            # lightest waiter first, so a request queued at a cut rate's weight can leave well
            # after the episode began and meet the server's next jitter 429).
            resume_at = self._hold.hold(wait)
            for lane in lanes:
                lane.hold_climb(resume_at)
            self._begin(now, resume_at, inflight)
            return 0.0
        # A new episode, or a sporadic 429 among the answers since (a stall that bunched the
        # requests in flight: counted on, and the window narrowed again, as a stalled server
        # takes all that are in flight at once): this request alone waits, and the rate keeps
        # climbing (a cut rate held for the whole Retry-After cost a tenth of R per 429 at
        # nginx's Retry-After: 1).
        self._hold.check(wait)
        if within:
            if sent_at >= self.narrowed_at:  # not one of those in flight at the last narrowing
                self._narrow(now, inflight)
        else:
            self._begin(now, now + wait, inflight)
        return wait

    def _begin(self, now: float, resume_at: float, inflight: int) -> None:
        """A throttling episode begins (or goes on): narrow the requests in flight, and count
        the answers to those sent from now on."""
        self.cut_at = now
        self.answered = self.refused = 0
        self.end = max(self.end, resume_at)
        self._narrow(now, inflight)

    def _narrow(self, now: float, inflight: int) -> None:
        self.narrowed_at = now
        self._window.narrow(inflight, self.end, now)
