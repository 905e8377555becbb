"""A fake clock for the pacer: an asyncio loop whose time is virtual.

The pacer reads the loop's clock (``loop.time()``: aiolimiter does too), so a loop whose
selector never blocks but moves the clock to the next timer drives every pace, pause and
``Retry-After`` exactly and instantly, as aiolimiter's own tests do. The health check
(``--give-up-after``) reads ``time.monotonic()`` and is not virtual. No sockets may be used
on this loop: it never waits for them.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio

__all__ = ["VirtualLoop", "run_virtual"]

T = TypeVar("T")


class _VirtualSelector(selectors.DefaultSelector):
    """select() does not wait: it moves the loop's virtual clock to the next timer."""

    def __init__(self, clock: list[float]) -> None:
        super().__init__()
        self._clock = clock

    def select(self, timeout: float | None = None) -> list[Any]:
        ready = super().select(0)
        if not ready and timeout is not None:
            # At least a nanosecond: a timer due within the clock's rounding (aiolimiter's
            # float arithmetic leaves such remainders) must still come due.
            self._clock[0] += max(timeout, 1e-9)
        return ready


class VirtualLoop(asyncio.SelectorEventLoop):
    """``loop.time()`` starts at 1000.0 and advances only when every task waits for a timer."""

    def __init__(self) -> None:
        self.clock = [1000.0]
        super().__init__(_VirtualSelector(self.clock))

    def time(self) -> float:
        return self.clock[0]


def run_virtual(main: Callable[[], Awaitable[T]]) -> T:
    """``anyio.run(main)`` on a :class:`VirtualLoop` (asyncio)."""
    return anyio.run(main, backend_options={"loop_factory": VirtualLoop})
