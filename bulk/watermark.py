"""The watermark of a run: how far the input is finished, with records finishing out of order.

Records start in input order and finish in any order. :class:`Tracker` keeps the started,
unfinished ones in order; the *watermark* (a byte offset and a line number) is the first of
them: everything before it is finished, so a resumed run seeks the input there. The lines
finished beyond it (``done_beyond``) go into the checkpoint too, so they are not redone. The
producer waits (:meth:`Tracker.wait_for_room`) while ``window`` records are between the
watermark and the newest started one: the checkpoint stays bounded by the window, not the input.
"""

from __future__ import annotations

from collections import deque

import anyio

from .source import RawLine

__all__ = ["Entry", "Tracker"]


class Entry:
    """One started record: its line number and the byte offset just past its line."""

    __slots__ = ("done", "end", "line")

    def __init__(self, line: int, end: int) -> None:
        self.line, self.end, self.done = line, end, False


class Tracker:
    """Watermark over out-of-order completion: everything before it is finished."""

    def __init__(self, offset: int, line: int) -> None:
        self.offset, self.line = offset, line  # next unfinished byte / line number
        self._pending: deque[Entry] = deque()
        self._room = anyio.Event()
        # the running backend's Event class, looked up once (anyio.Event() asks for the
        # backend at every call, and the producer may wait once per record)
        self._event: type[anyio.Event] = type(self._room)
        self._waiting = False  # the producer waits in wait_for_room: finish() must wake it

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, raw: RawLine) -> Entry:
        entry = Entry(raw.line_no, raw.end)
        self._pending.append(entry)
        return entry

    @property
    def read(self) -> tuple[int, int]:
        """(offset, line) just past the last line added: everything before it has been read."""
        if self._pending:
            last = self._pending[-1]
            return last.end, last.line + 1
        return self.offset, self.line

    def finish(self, entry: Entry) -> None:
        entry.done = True
        pending = self._pending
        while pending and pending[0].done:
            head = pending.popleft()
            self.offset, self.line = head.end, head.line + 1
        if self._waiting:
            self._room.set()

    async def wait_for_room(self, window: int) -> None:
        while len(self._pending) >= window:
            self._room = self._event()
            self._waiting = True
            try:
                await self._room.wait()
            finally:
                self._waiting = False

    def done_beyond(self) -> list[int]:
        return [e.line for e in self._pending if e.done]
