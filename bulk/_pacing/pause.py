"""Every worker held at once: until a ``Retry-After`` or an ``X-RateLimit-Reset``, on one event.

:meth:`Pause.hold` sets an :class:`anyio.Event` that a loop timer sets again at the end (no
polling); every worker waits on :attr:`Pause.event` while it is not None. A longer hold
extends the pause; a shorter one changes nothing. A wait longer than ``max_wait`` stops the
run resumably (:class:`QuotaExhausted`, saying when to resume) instead of burning the day on
429s. Times are the loop's clock (``loop.time()``).
"""

from __future__ import annotations

import asyncio
import datetime as dt

import anyio

from ..errors import QuotaExhausted

__all__ = ["Pause"]


class Pause:
    """Create inside the run: the event and the timer belong to the running loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, max_wait: float) -> None:
        self.max_wait = max_wait
        self._loop = loop
        self.event: anyio.Event | None = None  # set while paused: every worker waits on it
        self.until = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def check(self, wait: float) -> None:
        """Raise :class:`QuotaExhausted` if ``wait`` is longer than ``max_wait``."""
        if wait > self.max_wait:
            resume = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=wait)
            at = resume.isoformat(timespec="seconds")
            raise QuotaExhausted(
                f"the API asked to wait {wait:.0f} s (until {at}), longer than --max-wait "
                f"{self.max_wait:.0f} s: resume after {at} with the same command",
                resume_at=at,
            )

    def hold(self, wait: float) -> float:
        """Hold every new request for ``wait`` seconds (a longer pause already set wins);
        returns the loop time the pause ends."""
        self.check(wait)
        until = self._loop.time() + wait
        if self.event is None:
            self.event = anyio.Event()
        elif until <= self.until:
            return self.until
        if self._timer is not None:
            self._timer.cancel()
        self.until = until
        self._timer = self._loop.call_at(until, self._end)
        return until

    def _end(self) -> None:
        event, self.event, self._timer = self.event, None, None
        if event is not None:
            event.set()
