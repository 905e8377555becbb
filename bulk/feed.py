"""The producer -> workers hand-off of a run: bounded, with hysteresis, one producer.

anyio's memory object stream checkpoints on every send and receive and wakes a blocked
sender for every item taken: with a full stream, that is two extra event-loop turns per
record. :class:`Feed` is the same bounded hand-off without them:

- :meth:`Feed.get` takes an item without yielding when one is there; a worker that finds the
  feed empty waits, and each :meth:`Feed.put` wakes exactly one waiting worker;
- the producer fills the feed up to ``high`` items, then sleeps until the workers have
  drained it to ``low``: it wakes once per ``high - low`` records instead of once per record.

:meth:`Feed.close` (the producer is done) lets the workers drain what is left, then
:meth:`Feed.get` raises ``anyio.EndOfStream``.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

import anyio
from anyio import EndOfStream

__all__ = ["Feed"]

T = TypeVar("T")


class Feed(Generic[T]):
    """Create inside the run (anyio events are bound to the running loop)."""

    __slots__ = ("_closed", "_event", "_high", "_items", "_low", "_room", "_waiters")

    def __init__(self, high: int, low: int | None = None) -> None:
        if high < 1:
            raise ValueError("high must be at least 1")
        self._items: deque[T] = deque()
        self._high = high
        self._low = high // 2 if low is None else min(low, high - 1)
        self._closed = False
        self._room: anyio.Event | None = None  # the producer waits on it while the feed is full
        self._waiters: deque[anyio.Event] = deque()  # workers waiting for an item, oldest first
        # The running backend's Event class, looked up once: anyio.Event() asks for the
        # backend (get_async_backend) at every wait, a cost paid per record here.
        self._event: type[anyio.Event] = type(anyio.Event())

    def __len__(self) -> int:
        return len(self._items)

    async def put(self, item: T) -> None:
        """Add ``item``; when the feed is full, first wait until it has drained to ``low``."""
        if self._closed:
            raise anyio.ClosedResourceError
        while len(self._items) >= self._high:
            self._room = room = self._event()
            await room.wait()
        self._items.append(item)
        if self._waiters:  # _wake_one, inline (a call a record saved): the item just put is there
            self._waiters.popleft().set()

    def close(self) -> None:
        """No more items: waiting workers get ``EndOfStream`` once the feed is empty."""
        self._closed = True
        while self._waiters:
            self._waiters.popleft().set()

    async def get(self) -> T:
        """The oldest item; waits while the feed is empty; ``EndOfStream`` once closed and empty."""
        items = self._items
        while not items:
            if self._closed:
                raise EndOfStream
            ready = self._event()
            self._waiters.append(ready)
            try:
                await ready.wait()
            except BaseException:
                if ready in self._waiters:
                    self._waiters.remove(ready)
                else:
                    self._wake_one()  # woken but leaving: pass the item on to the next waiter
                raise
        item = items.popleft()
        if self._room is not None and len(items) <= self._low:
            self._room.set()
            self._room = None
        return item

    def take(self, limit: int) -> list[T]:
        """Up to ``limit`` more items that are there now, without waiting (to batch them)."""
        items = self._items
        out = [items.popleft() for _ in range(min(limit, len(items)))]
        if out and self._room is not None and len(items) <= self._low:
            self._room.set()
            self._room = None
        return out

    def _wake_one(self) -> None:
        if self._waiters and self._items:
            self._waiters.popleft().set()
