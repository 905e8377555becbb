"""Every request's ``--timeout``, kept by one watchdog task instead of a timer per request.

aiohttp's session-wide ``ClientTimeout(total=...)`` arms a timer handle and a timer context for
every request and cancels them after it: ~17.7k instructions a request under callgrind, more
than the rest of the transport's own work. A run's requests all share one timeout, so one
watchdog that wakes every ``tick`` (an eighth of the timeout, at most 1 s) and cancels the task
of each request past its deadline does the same job for a dict insert and delete a request.

The contract is ``asyncio.timeout``'s: :meth:`Deadlines.settle` is true for a request the
watchdog cancelled, and the cancellation is then taken back (``Task.uncancel``), so a request
that is also cancelled from outside (a cancel scope, the run stopping) stays cancelled. A
request times out between ``timeout`` and ``timeout + tick`` after it started.

One clock: deadlines are on the running loop's clock (:attr:`Deadlines.now`, ``loop.time``),
the clock the watchdog sleeps on, so a tick and a deadline are never compared across clocks.

If the watchdog ever stops other than by :meth:`close` (a bug, or someone cancelled it), no
request could time out again: :attr:`dead` then says why, and every request in flight is
cancelled (``settle`` returns True for it) so the caller can fail loudly instead of hanging.
Create it inside the run: its watchdog is a task of the running loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

__all__ = ["Deadlines"]


class Deadlines:
    """Deadlines of the requests in flight, one per task (a task sends one request at a time)."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.tick = min(max(timeout / 8, 0.005), 1.0)
        self.due: dict[asyncio.Task[Any], float] = {}  # the task of a request in flight -> its deadline
        self.dead: str | None = None  # why the watchdog stopped, if it stopped before close()
        self.now: Callable[[], float] = _no_clock  # the loop's clock, once started
        self._cancelled: set[asyncio.Task[Any]] = set()
        self._watch: asyncio.Task[None] | None = None

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.now = loop.time
        self._watch = watch = loop.create_task(self._run())
        watch.add_done_callback(self._stopped)

    async def close(self) -> None:
        watch, self._watch = self._watch, None  # None first: its stop is then not a death
        if watch is not None and not watch.done():  # a dead one's error is in `dead` (awaiting would re-raise it)
            watch.cancel()
            try:
                await watch
            except asyncio.CancelledError:
                # ours, unless this task is itself being cancelled: then let that go on
                if (task := asyncio.current_task()) is not None and task.cancelling():
                    raise

    def settle(self, task: asyncio.Task[Any]) -> bool:
        """Called once a request of ``task`` ended (any way): forget it, and say whether the
        watchdog had cancelled it. Its cancellation is taken back, so a ``CancelledError`` that
        remains is someone else's (``task.cancelling()`` stays above 0)."""
        del self.due[task]
        if task in self._cancelled:
            self._cancelled.discard(task)
            task.uncancel()
            return True
        return False

    def expire(self, now: float) -> None:
        """Cancel the task of every request past its deadline at ``now`` (the watchdog's tick)."""
        cancelled = self._cancelled
        for task, deadline in list(self.due.items()):
            if deadline <= now and task not in cancelled:
                cancelled.add(task)
                task.cancel()

    async def _run(self) -> None:
        due, tick, now = self.due, self.tick, self.now
        while True:
            await asyncio.sleep(tick)
            if due:
                self.expire(now())

    def _stopped(self, watch: asyncio.Task[None]) -> None:
        if self._watch is not watch:
            return  # close() stopped it
        if watch.cancelled():
            self.dead = "it was cancelled"
        else:
            exc = watch.exception()
            self.dead = f"{type(exc).__name__}: {exc}" if exc is not None else "it returned"
        self.expire(float("inf"))  # nothing in flight would ever time out: end it all now


def _no_clock() -> float:
    raise RuntimeError("Deadlines.start() was not called")
