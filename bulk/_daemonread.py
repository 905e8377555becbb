"""Reads of a pipe that never keep the process alive: each in a new daemon thread."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable

__all__ = ["DaemonReads"]


class DaemonReads:
    """``await reads(n)``: ``read(n)`` in a new daemon thread, the event loop free meanwhile.

    Not anyio's worker threads: those are not daemons, and one blocked on a read that never
    returns (stdin or a FIFO its stalled writer holds open) kept the process alive after the
    run had ended, waiting for the writer. ``read`` must take no lock the interpreter's exit
    needs: ``os.read`` of a descriptor, not a buffered file's read (a daemon thread holding
    stdin's buffer lock at exit aborts the interpreter). A cancelled wait leaves its read
    pending, not lost: the next call takes that read's bytes (shielded), so no line is dropped
    however often the reader's task is cancelled. A thread a read, one read at a time: a
    thread start costs ~50 us, a read is 1 MiB of a file or up to 64 KiB of a pipe."""

    def __init__(self, read: Callable[[int], bytes]) -> None:
        self._read = read
        self._pending: asyncio.Future[bytes] | None = None

    async def __call__(self, n: int) -> bytes:
        if self._pending is None:
            self._pending = self._start(n)
        got = await asyncio.shield(self._pending)
        self._pending = None
        return got

    def _start(self, n: int) -> asyncio.Future[bytes]:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[bytes] = loop.create_future()

        def settle(data: bytes | None, exc: BaseException | None) -> None:
            if done.done():
                return
            if exc is not None:
                done.set_exception(exc)
            else:
                done.set_result(data or b"")

        def run() -> None:
            data, exc = None, None
            try:
                data = self._read(n)
            except BaseException as e:  # OSError, a bad gzip stream: the awaiting task raises it
                exc = e
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                loop.call_soon_threadsafe(settle, data, exc)

        threading.Thread(target=run, name="bulk-input-read", daemon=True).start()
        return done
