"""An aiolimiter bucket whose wake-up timer never asks for less than one tick of the loop's clock.

aiolimiter arms a timer for the instant the head waiter's capacity will have leaked out. On
uvloop, ``loop.time()`` is in whole ms (libuv's clock) and a timer's delay is rounded to the
nearest ms, 0 ms being ``call_soon``. So a wait under 0.5 ms, or the sub-ms remainder of one
(1/R = 1.11 ms at R = 900), re-armed a 0 ms timer every loop turn until the clock ticked:
~70 wake-ups per request at R = 900, a busy loop that cost 0.49 s of CPU per 1,000 requests
and held the rate to 0.71 R. :class:`Bucket` arms the timer for the first tick of the loop's
clock at which the capacity is there (never less than one tick ahead), so the head waiter
wakes once, when it can go. Admission itself is aiolimiter's, unchanged: the bucket never
lets a request go earlier than aiolimiter would, it only stops asking before it can.

Every use of aiolimiter's internals is in this module (aiolimiter has no public way to give
capacity back or to read a bucket's level: ``acquire`` and ``has_capacity`` are all): the
overridden ``_wake_next``, and :meth:`Bucket.give_back` / :meth:`Bucket.resized`, which
read and write ``_level`` and ``_last_check``. pyproject.toml pins the aiolimiter versions
they were written against, and tests/test_pacing_bucket.py fails when those internals change.
"""

from __future__ import annotations

import asyncio
import math
from heapq import heappop

from aiolimiter import AsyncLimiter

__all__ = ["MS", "Bucket", "tick_of"]

#: The clock resolution of a loop that is not asyncio's own: uvloop's ``loop.time()`` and
#: timers are in whole ms (libuv's clock).
MS = 0.001


def tick_of(loop: asyncio.AbstractEventLoop) -> float:
    """The resolution of ``loop``'s clock: asyncio's own loop reads ``time.monotonic()`` and
    says its resolution (``_clock_resolution``, 1 ns on Linux); any other loop (uvloop) is
    taken to read in whole ms, the coarsest in use (rounding a wait up to it costs at most
    1 ms of lateness, which the bucket's burst takes back)."""
    if isinstance(loop, asyncio.BaseEventLoop):
        return float(getattr(loop, "_clock_resolution", MS))
    return MS


class Bucket(AsyncLimiter):
    """:class:`aiolimiter.AsyncLimiter` with its wake-up timer rounded up to the loop clock's tick.

    Overrides aiolimiter's private ``_wake_next`` (pyproject.toml pins the aiolimiter versions
    whose internals it was written against): the same steps, but the timer is armed a whole
    number of ticks (at least one) after the bucket's last check, the first tick at or after
    the instant aiolimiter computes.
    """

    __slots__ = ("_tick",)

    def __init__(self, max_rate: float, time_period: float = 60) -> None:
        super().__init__(max_rate, time_period)
        self._tick = 0.0  # found on the first timer, when the loop is bound

    def _wake_next(self, *_args: object) -> None:
        heap, handle, self._waker_handle = self._waiters, self._waker_handle, None
        if handle is not None:
            handle.cancel()
        while heap and heap[0][-1].done():
            heappop(heap)
        if not heap:
            return
        amount, _, fut = heap[0]
        self._leak()
        needed = amount - self.max_rate + self._level
        if needed <= 0:
            heappop(heap)
            fut.set_result(None)  # its done callback calls _wake_next for the next waiter
            return
        loop = self._loop
        tick = self._tick or self._find_tick(loop)
        # The first tick at or after the instant the capacity is there: on a clock in whole ms
        # the bucket cannot admit before the clock reads it, and a timer for less than one tick
        # would come due at once (uvloop rounds it to 0 ms) and find the clock unchanged.
        ticks = max(1, math.ceil(needed / self._rate_per_sec / tick))
        self._waker_handle = loop.call_at(self._last_check + ticks * tick, self._wake_next)

    def give_back(self, amount: float) -> None:
        """Undo an :meth:`acquire` of ``amount`` made at this instant (aiolimiter has no release:
        its state is the bucket's level), and re-arm the wake-up timer for the lower level (the
        one armed after that acquire was for the higher one: its head waiter would wake late)."""
        self._level = max(self._level - amount, 0.0)
        if self._waiters:
            self._wake_next()

    def resized(self, capacity: float) -> Bucket:
        """A new bucket of ``capacity`` at this one's pace, as full as this one is (at most
        ``capacity``): aiolimiter's capacity cannot change under its waiters (one waiting for
        more than a smaller capacity would wait forever), so a lane replaces its bucket."""
        new = Bucket(capacity, capacity / self._rate_per_sec)
        new._level, new._last_check = min(self._level, capacity), self._last_check
        return new

    def _find_tick(self, loop: asyncio.AbstractEventLoop) -> float:
        self._tick = tick_of(loop)
        return self._tick
