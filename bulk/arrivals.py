"""Open-loop arrivals (``--arrival-rate R``): records start on a fixed schedule (issue 15).

In the default closed loop a worker starts its next record when the last one finished, so a
server that stalls also stalls the load, and the requests that *would* have been sent during
the stall are never measured (coordinated omission). Here record i is due at ``t0 + i / R``
whatever the server does: a free worker waits for the next due time; a worker that only
becomes free after it (every worker was busy: the server is slow, or --concurrency too
small for R) starts at once, the record counts as a *late start*, and its first request's
latency counts from the due time (``bulk.latency.INTENDED``), as wrk2 and k6 do.
"""

from __future__ import annotations

import time

import anyio

__all__ = ["Arrivals"]


class Arrivals:
    """The schedule shared by a run's workers. ``late`` counts the late starts."""

    def __init__(self, rate: float) -> None:
        self._interval = 1.0 / rate
        # A start within one interval (at least 10 ms) of its due time is on time: the event
        # loop's own jitter is not a late start.
        self._tolerance = max(self._interval, 0.010)
        self._next: float | None = None
        self.late = 0

    async def start(self) -> float:
        """Wait for the next record's due time and return it (``time.monotonic()``)."""
        now = time.monotonic()
        if self._next is None:
            self._next = now
        due = self._next
        self._next = due + self._interval
        if due > now:
            await anyio.sleep(due - now)
        elif now - due > self._tolerance:
            self.late += 1
        return due
