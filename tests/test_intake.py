"""Intake (bulk._intake): the one parse/validate/dedupe/shard path of upload, validate and --dry-run."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from bulk import _intake
from bulk._intake import Intake, file_reread, memory_dedupe
from bulk.checkpoint import id_hash
from bulk.config import Shard
from bulk.errors import InvalidRecord
from bulk.source import RawLine
from bulk.targets import get_target


def _line(n: int, data: bytes | None, length: int | None = None) -> RawLine:
    return RawLine(line_no=n, start=0, end=0, data=data, length=len(data or b"") if length is None else length)


def _doc(ext: str, customer: str = "CUST-1", **changes: Any) -> bytes:
    doc: dict[str, Any] = {"external_id": ext, "customer": {"external_id": customer, "email": "jane@example.com"},
                           "currency": "EUR",
                           "lines": [{"title": "Consulting", "quantity": 1, "unit_price": "1.00", "tax_rate": "19"}]}
    doc.update(changes)
    return orjson.dumps(doc)


def test_screen_skips_blanks_rejects_overlong_broken_and_duplicate_lines_naming_line_field_and_id() -> None:
    intake = Intake(max_line_bytes=100, first_line=memory_dedupe(), target=None)
    assert intake.screen(_line(1, b"  \t")) is None
    record = intake.screen(_line(2, _doc("INV-1")))
    assert record is not None and record.external_id == "INV-1"
    with pytest.raises(InvalidRecord) as info:
        intake.screen(_line(3, None, length=5000))
    assert (info.value.line_no, info.value.field, intake.external_id) == (3, "(line)", None)
    assert "5000 bytes, over the 100-byte limit" in info.value.reason
    with pytest.raises(InvalidRecord) as info:
        intake.screen(_line(4, _doc("INV-2", currency="EURO")))
    assert info.value.line_no == 4 and intake.external_id == "INV-2"  # peeked from the broken record
    with pytest.raises(InvalidRecord) as info:
        intake.screen(_line(5, _doc("INV-1")))
    assert (info.value.field, intake.external_id) == ("external_id", "INV-1")
    assert info.value.reason == "duplicate of line 2 ('INV-1')"


def test_a_shard_dedupes_every_record_but_keeps_only_its_customers_and_lines() -> None:
    target = get_target("agiled")(base_url="", credentials={}, options={})
    a, b = "CUST-A", next(f"CUST-{i}" for i in range(100) if id_hash(f"CUST-{i}") % 2 != id_hash("CUST-A") % 2)
    mine = Shard(id_hash(a) % 2, 2)
    intake = Intake(max_line_bytes=1000, first_line=memory_dedupe(), target=target, shard=mine)
    assert intake.screen(_line(1, _doc("INV-1", b))) is None  # another shard's customer
    with pytest.raises(InvalidRecord):  # ...whose external id still stands first: a copy is a duplicate
        intake.screen(_line(2, _doc("INV-1", a)))
    assert intake.screen(_line(3, _doc("INV-3", a))) is not None
    broken = _line(4 + mine.index, b"{not json")  # a line without a customer: its line number decides
    other = _line(5 - mine.index, b"{not json")
    assert intake.screen(other) is None
    with pytest.raises(InvalidRecord):
        intake.screen(broken)


# --- a shard skips the other shards' lines: the same outcome as parsing every line ----------

def _hostile_input(seed: int, n: int = 400) -> bytes:
    """Records of a few customers, with duplicate ids (same and other customers), invalid lines
    sharing ids with valid ones (before and after them), and lines a peek cannot judge."""
    rng = random.Random(seed)
    ids = [f"INV-{i}" for i in range(n // 3)]
    out: list[bytes] = []
    for _ in range(n):
        ext, cust = rng.choice(ids), f"CUST-{rng.randrange(7)}"
        kind = rng.random()
        if kind < 0.55:
            out.append(_doc(ext, cust))
        elif kind < 0.70:
            out.append(_doc(ext, cust, currency="EURO"))  # invalid, its id peeks fine
        elif kind < 0.75:
            out.append(_doc(ext, cust, lines=[]))
        elif kind < 0.79:
            out.append(b'{"external_id": "%s", "customer": ' % ext.encode())  # cut short
        elif kind < 0.82:
            out.append(_doc(f" {ext}", cust))  # not a plain id: the parse judges it
        elif kind < 0.85:
            out.append(_doc(ext, f"{cust} "))
        elif kind < 0.88:
            out.append(orjson.dumps({**orjson.loads(_doc(ext, cust)), "customer": cust}))  # not an object
        elif kind < 0.91:  # a repeated key: the last one counts, for the peek as for the parse
            out.append(b'{"external_id":"X-dup",' + _doc(ext, cust)[1:])
        elif kind < 0.94:
            out.append(b"   ")
        elif kind < 0.97:
            out.append(_doc(ext, cust, notes="x" * 700))  # overlong
        else:
            out.append(_doc(ext, cust) + b"\r")
    return b"\xef\xbb\xbf" + b"\n".join(out) + b"\n"


def _raw_lines(data: bytes, max_line_bytes: int) -> list[RawLine]:
    lines, start = [], 0
    for n, line in enumerate(data.split(b"\n")[:-1], start=1):
        lines.append(RawLine(line_no=n, start=start, end=start + len(line) + 1,
                             data=line if len(line) <= max_line_bytes else None, length=len(line)))
        start += len(line) + 1
    return lines


def _outcomes(intake: Intake, lines: list[RawLine]) -> list[tuple[int, str, str | None]]:
    """(line, "ok" or "field: reason", external id named) of every line the intake keeps or rejects."""
    seen = []
    for raw in lines:
        try:
            record = intake.screen(raw)
        except InvalidRecord as exc:
            seen.append((raw.line_no, f"{exc.field}: {exc.reason}", intake.external_id))
            continue
        if record is not None:
            seen.append((raw.line_no, "ok", record.external_id))
    return seen


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("count", [2, 3])
def test_shards_that_skip_others_lines_report_what_one_process_does(tmp_path: Path, seed: int, count: int) -> None:
    path = tmp_path / "in.ndjson"
    path.write_bytes(_hostile_input(seed))
    lines = _raw_lines(path.read_bytes(), 600)
    target = get_target("agiled")(base_url="", credentials={}, options={})
    alone = _outcomes(Intake(max_line_bytes=600, first_line=memory_dedupe(), target=target), lines)
    assert any("duplicate of line" in o[1] for o in alone) and any(o[1] == "ok" for o in alone)
    union: list[tuple[int, str, str | None]] = []
    reporters: Counter[int] = Counter()
    for k in range(count):
        def intake(reread: bool, first_line: Callable[[str, int], int] | None = None, k: int = k) -> Intake:
            return Intake(max_line_bytes=600, first_line=first_line or memory_dedupe(), target=target,
                          shard=Shard(k, count), reread=file_reread(str(path)) if reread else None)
        skipping = _outcomes(intake(True), lines)
        # the same records accepted as without skipping; a rejected line may be another shard's
        assert [o for o in skipping if o[1] == "ok"] == [o for o in _outcomes(intake(False), lines) if o[1] == "ok"]
        reporters.update(o[0] for o in skipping if o[1] != "ok")
        # a resumed run: state.db's rows ran ahead of the checkpoint (line 150) up to line 250
        first_line = memory_dedupe()
        _outcomes(intake(True, first_line), lines[:250])
        assert _outcomes(intake(True, first_line), lines[149:]) == [o for o in skipping if o[0] >= 150]
        union += skipping
    assert set(reporters.values()) == {1}  # each rejected line reported by exactly one shard
    assert sorted(union) == alone


def test_a_shard_skips_others_lines_without_parsing_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = get_target("agiled")(base_url="", credentials={}, options={})
    mine = Shard(0, 2)
    other = next(f"CUST-{i}" for i in range(100) if id_hash(f"CUST-{i}") % 2 == 1)
    path = tmp_path / "in.ndjson"
    path.write_bytes(b"\n".join(_doc(f"INV-{n}", other) for n in range(1, 41)) + b"\n")
    parsed: list[int] = []
    real, general = _intake._fast_record, _intake._parse_general
    monkeypatch.setattr(_intake, "_fast_record", lambda data, n: parsed.append(n) or real(data, n))
    monkeypatch.setattr(_intake, "_parse_general", lambda data, n: parsed.append(n) or general(data, n))
    intake = Intake(max_line_bytes=600, first_line=memory_dedupe(), target=target, shard=mine,
                    reread=file_reread(str(path)))
    assert _outcomes(intake, _raw_lines(path.read_bytes(), 600)) == []
    assert parsed == []  # its customer's shard alone parses (and reports) a line a peek places
    theirs = Intake(max_line_bytes=600, first_line=memory_dedupe(), target=target, shard=Shard(1, 2),
                    reread=file_reread(str(path)))
    bad = _line(2, _doc("INV-2", other, currency="EURO"))  # line number 2 is shard 0's
    assert intake.screen(bad) is None
    with pytest.raises(InvalidRecord, match="currency"):
        theirs.screen(bad)
