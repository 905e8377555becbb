"""The bound on the requests a run holds at once: a resizable first-come-first-served gate.

One counter for both of the pacer's bounds on the requests in flight: ``--concurrency`` and
the window (:mod:`.window`), whose size changes while requests hold places. It replaces an
:class:`anyio.Semaphore` plus an :class:`anyio.CapacityLimiter` taken for every request: the
limiter's borrower set and the two method calls each way were most of the pacer's per-request
cost, and a free place here is two attribute operations the caller does inline.

Invariant: waiters queue only while ``held >= size``; every :meth:`leave` and :meth:`resize`
lets the head waiters in while there is room, so ``held < size`` alone means "enter now".
Create it inside the run (its futures belong to the running loop).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

__all__ = ["Gate"]


class Gate:
    """At most ``size`` holders; ``held`` may exceed ``size`` for a while after a shrink (those
    already in keep their places: the gate only stops letting new ones in)."""

    __slots__ = ("held", "size", "waiters")

    def __init__(self, size: int) -> None:
        self.size = size
        self.held = 0
        self.waiters: deque[asyncio.Future[None]] = deque()

    async def enter(self) -> None:
        """Take a place, waiting (first come, first served) while there is none."""
        if self.held < self.size:
            self.held += 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.append(fut)
        try:
            await fut
        except BaseException:
            if fut.cancelled():  # not let in: leave the queue
                with contextlib.suppress(ValueError):
                    self.waiters.remove(fut)
            else:  # let in (the place is ours) but cancelled before it ran: give it back
                self.leave()
            raise

    def leave(self) -> None:
        """Give a place back (the holder's request is answered, or it never left)."""
        self.held -= 1
        if self.waiters:
            self.admit()

    def resize(self, size: int) -> None:
        """Let ``size`` hold places from now on (a shrink waits for holders to leave)."""
        self.size = size
        if self.waiters:
            self.admit()

    def admit(self) -> None:
        """Let the head waiters in while there is room (after ``held`` went down)."""
        waiters = self.waiters
        while waiters and self.held < self.size:
            fut = waiters.popleft()
            if not fut.done():  # a cancelled waiter is skipped (it removes itself, too)
                self.held += 1  # on its behalf: it runs with the place taken
                fut.set_result(None)
