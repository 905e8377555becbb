"""anny's identical-request guard (A-rate: at most N requests with the same method, path,
query and body per organization in any second)."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Hashable

__all__ = ["IdenticalGuard"]


class IdenticalGuard:
    """anny's "at most N identical requests per second" (A-rate), as a sliding 1 s window of
    arrival times per request identity. A refused request is not counted, so a client that
    honours ``Retry-After`` is served on its return. ``clock`` is monotonic seconds."""

    def __init__(self, limit: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self._clock = clock
        self._seen: dict[Hashable, deque[float]] = {}

    def admit(self, key: Hashable) -> int:
        """0 when the request may go on, else the Retry-After seconds (>= 1)."""
        if self.limit <= 0:
            return 0
        now = self._clock()
        if len(self._seen) > 10_000:  # forget identities idle for more than a second
            self._seen = {k: q for k, q in self._seen.items() if q and q[-1] > now - 1}
        times = self._seen.setdefault(key, deque())
        while times and times[0] <= now - 1:
            times.popleft()
        if len(times) >= self.limit:
            return max(1, math.ceil(times[0] + 1 - now))
        times.append(now)
        return 0

    def clear(self) -> None:
        self._seen.clear()
