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
from typing import TypeAlias

import anyio

from .source import RawLine

__all__ = ["Entry", "Tracker"]

#: One started record: ``[line number, byte offset just past its line, done (0 or 1)]``. A
#: list, not a class: :meth:`Tracker.add` and :meth:`Tracker.finish` run once per record, and
#: a list is built and written without a Python call (measured: ~2,000 instructions a record
#: less than a slotted class with an ``__init__``). Opaque to the callers: they hand back what
#: :meth:`Tracker.add` returned.
Entry: TypeAlias = list[int]
_LINE, _END, _DONE = 0, 1, 2


class Tracker:
    """Watermark over out-of-order completion: everything before it is finished.

    ``pending`` (read-only for callers) holds the started, unfinished-or-not-yet-passed
    entries in input order; ``len(tracker.pending)`` is what :meth:`wait_for_room` compares
    with the window, without a Python call."""

    def __init__(self, offset: int, line: int) -> None:
        self.offset, self.line = offset, line  # next unfinished byte / line number
        self.pending: deque[Entry] = deque()
        self._room = anyio.Event()
        # the running backend's Event class, looked up once (anyio.Event() asks for the
        # backend at every call, and the producer may wait once per record)
        self._event: type[anyio.Event] = type(self._room)
        self._waiting = False  # the producer waits in wait_for_room: finish() must wake it

    def __len__(self) -> int:
        return len(self.pending)

    def add(self, raw: RawLine) -> Entry:
        entry = [raw.line_no, raw.end, 0]
        self.pending.append(entry)
        return entry

    @property
    def read(self) -> tuple[int, int]:
        """(offset, line) just past the last line added: everything before it has been read."""
        if self.pending:
            last = self.pending[-1]
            return last[_END], last[_LINE] + 1
        return self.offset, self.line

    def finish(self, entry: Entry) -> None:
        assert not entry[_DONE], "a record finished twice"  # its outcome would be written twice
        entry[_DONE] = 1
        pending = self.pending
        if pending and pending[0] is entry:  # the oldest: the watermark moves past it and the done after it
            pending.popleft()
            while pending and pending[0][_DONE]:
                entry = pending.popleft()
            self.offset, self.line = entry[_END], entry[_LINE] + 1
        if self._waiting:
            self._room.set()

    async def wait_for_room(self, window: int) -> None:
        while len(self.pending) >= window:
            self._room = self._event()
            self._waiting = True
            try:
                await self._room.wait()
            finally:
                self._waiting = False

    def done_beyond(self) -> list[int]:
        return [e[_LINE] for e in self.pending if e[_DONE]]
