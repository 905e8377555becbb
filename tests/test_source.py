"""The streaming reader: offsets, numbering, overlong lines, resume by seeking."""

from __future__ import annotations

import gzip
from pathlib import Path

import anyio
import pytest

from bulk.source import InputFile, RawLine, estimate_records, fingerprint


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


@pytest.mark.parametrize("data", [
    b"", b"\n", b"\n" * 5000, b"x", b"x\n", b"\nx", b'{"a":1}\n' * 3000 + b'{"b":2}',
    (b"y" * 900 + b"\n") * 40, b"\n" * 100 + b"z" * 5000 + b"\n" * 3,  # short lines, then long ones
    b"z" * 5000 + b"\n" * 200,  # long lines, then many short ones: past the loop's bound
])
def test_estimate_records_counts_every_line_of_a_small_file(tmp_path: Path, data: bytes) -> None:
    # exact below exact_up_to, whatever the lines' lengths (the newline count has two ways)
    p = tmp_path / "in.ndjson"
    p.write_bytes(data)
    assert estimate_records(str(p)) == data.count(b"\n") + (not data.endswith(b"\n") and bool(data))


def test_estimate_records_scales_what_it_counted(tmp_path: Path) -> None:
    p = tmp_path / "in.ndjson"
    p.write_bytes(b"a" * 99 + b"\n" + (b"b" * 9 + b"\n") * 10_000)
    assert estimate_records(str(p), exact_up_to=1 << 20) == 10_001
    assert estimate_records(str(p), exact_up_to=1000) is not None


def test_a_raw_line_is_built_by_position_or_keyword() -> None:
    by_keyword = RawLine(line_no=3, start=10, end=15, data=b"abcd", length=4)
    assert by_keyword == RawLine(3, 10, 15, b"abcd", 4)
    assert (by_keyword.line_no, by_keyword.start, by_keyword.end, by_keyword.data, by_keyword.length) == \
        (3, 10, 15, b"abcd", 4)
    assert RawLine(1, 0, 0, None, 0) != by_keyword


def _reference_lines(data: bytes, max_line_bytes: int) -> list[tuple[int, int, int, bytes | None, int]]:
    rows, offset = [], 0
    parts = data.split(b"\n")
    if parts[-1] == b"":
        parts.pop()  # a final newline ends the last line; nothing follows it
    for n, part in enumerate(parts, 1):
        end = offset + len(part) + (1 if offset + len(part) < len(data) else 0)
        rows.append((n, offset, end, part if len(part) <= max_line_bytes else None, len(part)))
        offset = end
    return rows


@pytest.mark.parametrize("chunk", [1, 3, 7, 64, 1 << 20])
def test_lines_match_a_plain_split_whatever_the_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     chunk: int) -> None:
    """Lines cut by reads of any size (overlong ones discarded across several reads, blank lines,
    no final newline) are those of splitting the whole input at its newlines."""
    import random

    from bulk import source

    monkeypatch.setattr(source, "_CHUNK", chunk)
    rng = random.Random(chunk)
    for case in range(30):
        data = b"\n".join(b"x" * rng.choice((0, 1, 5, 9, 10, 11, 30)) for _ in range(rng.randrange(1, 40)))
        data += rng.choice((b"", b"\n"))
        p = tmp_path / f"in{case}.ndjson"
        p.write_bytes(data)
        assert read_all(p, max_line_bytes=10) == _reference_lines(data, 10), data
