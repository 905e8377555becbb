"""The streaming reader: offsets, numbering, overlong lines, resume by seeking."""

from __future__ import annotations

import gzip
from pathlib import Path

import anyio
import pytest

from bulk.source import InputFile, fingerprint


def read_all(path: Path, **kw: object) -> list[tuple[int, int, int, bytes | None, int]]:
    async def go() -> list[tuple[int, int, int, bytes | None, int]]:
        src = InputFile(str(path))
        try:
            return [(r.line_no, r.start, r.end, r.data, r.length) async for r in src.lines(**kw)]  # type: ignore[arg-type]
        finally:
            src.close()

    return anyio.run(go)


def test_offsets_and_numbers_cover_every_byte(tmp_path: Path) -> None:
    p = tmp_path / "in.ndjson"
    p.write_bytes(b'{"a":1}\n\n{"b":2}\r\n{"c":3}')  # blank line, CRLF, no final newline
    rows = read_all(p, max_line_bytes=1024)
    assert [r[0] for r in rows] == [1, 2, 3, 4]
    assert rows[0] == (1, 0, 8, b'{"a":1}', 7)
    assert rows[1][3] == b""
    assert rows[2][3] == b'{"b":2}\r'
    assert rows[3] == (4, 18, 25, b'{"c":3}', 7)  # truncated last line is still yielded
    assert rows[-1][2] == p.stat().st_size


def test_resume_seeks_to_the_watermark(tmp_path: Path) -> None:
    p = tmp_path / "in.ndjson"
    p.write_bytes(b"".join(b'{"n":%d}\n' % i for i in range(100)))
    rows = read_all(p, max_line_bytes=1024)
    start, line = rows[40][1], rows[40][0]
    resumed = read_all(p, start=start, first_line=line, max_line_bytes=1024)
    assert resumed == rows[40:]


def test_gzip_input_resumes_by_decompressed_offset(tmp_path: Path) -> None:
    p = tmp_path / "in.ndjson.gz"
    with gzip.open(p, "wb") as f:
        f.write(b"".join(b'{"n":%d}\n' % i for i in range(50)))
    rows = read_all(p, max_line_bytes=1024)
    assert len(rows) == 50
    assert read_all(p, start=rows[10][1], first_line=11, max_line_bytes=1024) == rows[10:]


@pytest.mark.parametrize("size", [5_000, 3 << 20])
def test_overlong_line_is_skipped_without_being_kept(tmp_path: Path, size: int) -> None:
    p = tmp_path / "in.ndjson"
    p.write_bytes(b'{"ok":1}\n' + b"x" * size + b'\n{"ok":2}\n')
    rows = read_all(p, max_line_bytes=4096)
    assert [(r[0], r[3], r[4]) for r in rows] == [(1, b'{"ok":1}', 8), (2, None, size), (3, b'{"ok":2}', 8)]
    assert rows[1][2] == 9 + size + 1


def test_fingerprint_changes_when_the_file_changes(tmp_path: Path) -> None:
    p = tmp_path / "in.ndjson"
    p.write_bytes(b'{"a":1}\n' * 1000)
    before = fingerprint(str(p))
    assert fingerprint(str(p)) == before
    p.write_bytes(b'{"a":2}\n' * 1000)
    assert fingerprint(str(p)) != before


def test_batches_are_the_lines_in_small_lists_that_never_span_two_reads(tmp_path: Path) -> None:
    """The producer reads batches (one generator step for many lines): together exactly the lines
    `lines` yields, at most _BATCH each, and a read's lines handed on before the next read."""
    from bulk import source

    p = tmp_path / "in.ndjson"
    lines = [b'{"n":%d,"pad":"%s"}' % (i, b"x" * (i % 3000)) for i in range(2500)]  # ~3.7 MB: several reads
    p.write_bytes(b"\n".join(lines) + b"\n" + b'{"tail":1}')  # no final newline

    async def go() -> tuple[list[list[source.RawLine]], list[int]]:
        src = InputFile(str(p))
        batches, positions = [], []
        try:
            async for batch in src.batches(max_line_bytes=2500):
                batches.append(batch)
                positions.append(src.position)
        finally:
            src.close()
        return batches, positions

    batches, positions = anyio.run(go)
    flat = [(r.line_no, r.start, r.end, r.data, r.length) for batch in batches for r in batch]
    assert flat == read_all(p, max_line_bytes=2500)
    overlong = sum(len(line) > 2500 for line in lines)
    assert len(flat) == 2501 and overlong and sum(r[3] is None for r in flat) == overlong
    assert all(0 < len(batch) <= source._BATCH for batch in batches)
    # every line of a batch was in the bytes read when the batch was handed on
    assert all(batch[-1].end <= pos for batch, pos in zip(batches, positions, strict=True))
    assert len(set(positions)) >= 4  # several reads
