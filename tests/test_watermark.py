"""The watermark seam (bulk.watermark): out-of-order completion, what the checkpoint stores,
and the producer's wait for room."""

from __future__ import annotations

import anyio

from bulk.source import RawLine
from bulk.watermark import Tracker


def _raw(line: int, start: int, length: int) -> RawLine:
    return RawLine(line_no=line, start=start, end=start + length, data=b"x" * (length - 1), length=length - 1)


def test_the_watermark_moves_only_over_finished_records_in_order() -> None:
    async def main() -> None:
        t = Tracker(offset=100, line=5)
        entries = [t.add(_raw(5 + i, 100 + 10 * i, 10)) for i in range(4)]  # lines 5..8
        t.finish(entries[2])
        t.finish(entries[1])
        assert (t.offset, t.line) == (100, 5)  # line 5 is still running
        assert t.done_beyond() == [6, 7]
        t.finish(entries[0])
        assert (t.offset, t.line) == (130, 8)  # past lines 5-7: line 8 is next
        assert t.done_beyond() == [] and len(t) == 1
        t.finish(entries[3])
        assert (t.offset, t.line) == (140, 9) and len(t) == 0

    anyio.run(main)


def test_the_producer_waits_for_room_and_is_woken_by_a_finish() -> None:
    async def main() -> list[str]:
        t = Tracker(offset=0, line=1)
        first = t.add(_raw(1, 0, 10))
        t.add(_raw(2, 10, 10))
        seen: list[str] = []

        async def producer() -> None:
            await t.wait_for_room(2)
            seen.append("room")

        async with anyio.create_task_group() as tg:
            tg.start_soon(producer)
            await anyio.sleep(0.05)
            seen.append("finishing")
            t.finish(first)
        return seen

    assert anyio.run(main) == ["finishing", "room"]
