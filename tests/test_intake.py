"""Intake (bulk._intake): the one parse/validate/dedupe/shard path of upload, validate and --dry-run."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from bulk._intake import Intake, memory_dedupe
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
