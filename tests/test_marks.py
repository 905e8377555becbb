"""bulk.marks: a mark is durable once ``mark`` returns, read back by the next open; a torn last
line (a kill mid-append) is cut, the whole marks before it kept."""

from __future__ import annotations

from pathlib import Path

import anyio

from bulk.marks import FILE, MarkLog


def test_marks_survive_a_reopen_and_a_torn_line_is_cut(tmp_path: Path) -> None:
    log = MarkLog(tmp_path)
    assert not log.marked_before("create", "item:SKU-1")

    async def mark() -> None:
        await log.mark("create", "item:SKU-1")
        await log.mark("create", 'customer:C-"1"')

    anyio.run(mark)
    assert not log.marked_before("create", "item:SKU-1")  # this run's: not an earlier run's
    log.close()
    whole = (tmp_path / FILE).read_bytes()
    with open(tmp_path / FILE, "ab") as f:
        f.write(b'["create", "item:SKU-')  # killed mid-append
    again = MarkLog(tmp_path)
    assert again.marked_before("create", "item:SKU-1") and again.marked_before("create", 'customer:C-"1"')
    assert not again.marked_before("create", "item:SKU-2")
    again.close()
    assert (tmp_path / FILE).read_bytes() == whole
