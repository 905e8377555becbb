"""Parsing and validating one NDJSON line (bulk.records): the hostile corpus, exact amounts, hand totals."""

from __future__ import annotations

import contextlib
import datetime
import importlib.util
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

from bulk.errors import InvalidRecord
from bulk.money import Totals
from bulk.records import Record, parse_record, peek_external_id

D = Decimal
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
CORPUS = (FIXTURES / "hostile.ndjson").read_bytes()
EXPECTED: dict[str, dict[str, Any]] = json.loads((FIXTURES / "hostile_expected.json").read_text("utf-8"))
LINES = CORPUS.split(b"\n")  # strip nothing else: CRs, BOMs and the unterminated last line stay as they are


def record(**changes: Any) -> dict[str, Any]:
    """A valid invoice document; ``changes`` replace top-level keys."""
    doc: dict[str, Any] = {
        "external_id": "INV-1",
        "customer": {"external_id": "CUST-1", "email": "jane@example.com"},
        "currency": "EUR",
        "lines": [{"title": "Consulting", "quantity": 1, "unit_price": "1.00", "tax_rate": "19"}],
    }
    doc.update(changes)
    return doc


def parse(doc: dict[str, Any] | bytes, line_no: int = 1) -> Record:
    return parse_record(doc if isinstance(doc, bytes) else orjson.dumps(doc), line_no)


def rejection(doc: dict[str, Any] | bytes) -> InvalidRecord:
    with pytest.raises(InvalidRecord) as info:
        parse(doc, 9)
    assert info.value.line_no == 9
    return info.value


# --- the hostile corpus ---------------------------------------------------------------------------------------


def test_corpus_shape() -> None:
    assert not CORPUS.endswith(b"\n"), "the last line must be cut off without a newline"
    non_blank = {str(no) for no, raw in enumerate(LINES, 1) if raw}
    assert set(EXPECTED) == non_blank, "every non-blank line, and only those, has an expectation"
    outcomes = [e["outcome"] for e in EXPECTED.values()]
    assert outcomes.count("ok") >= 10
    assert outcomes.count("duplicate") >= 1
    assert b"" in LINES[:-1], "blank lines count in line numbers"
    assert LINES[-1].startswith(b"{") and EXPECTED[str(len(LINES))]["outcome"] == "rejected"


@pytest.mark.parametrize("line_no", [no for no, raw in enumerate(LINES, 1) if raw])
def test_corpus_line(line_no: int) -> None:
    raw, want = LINES[line_no - 1], EXPECTED[str(line_no)]
    if want["outcome"] == "rejected":
        with pytest.raises(InvalidRecord) as info:
            parse_record(raw, line_no)
        err = info.value
        assert (err.line_no, err.field) == (line_no, want["field"]), str(err)
        assert err.reason and err.fix, "every rejection says what is wrong and how to fix it"
        assert len(str(err)) < 300, "never quote much of the offending value"
        return
    rec = parse_record(raw, line_no)
    assert rec.line_no == line_no
    if want["outcome"] == "duplicate":
        # parse_record accepts it; the pipeline rejects it because an earlier valid line has the same id.
        assert want["field"] == "external_id"
        earlier = [parse_record(LINES[no - 1], no).external_id
                   for no in range(1, line_no) if EXPECTED.get(str(no), {}).get("outcome") == "ok"]
        assert rec.external_id in earlier
    else:
        assert want["outcome"] == "ok"
        assert rec.totals().gross == sum((t.gross for t in rec.line_totals()), D(0))


def test_corpus_is_what_make_hostile_writes() -> None:
    spec = importlib.util.spec_from_file_location("make_hostile", FIXTURES / "make_hostile.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    corpus, expected = module.build()
    assert corpus == CORPUS
    assert expected == EXPECTED


# --- tolerated noise ------------------------------------------------------------------------------------------


def test_bom_and_crlf_are_tolerated() -> None:
    raw = orjson.dumps(record())
    for variant in (b"\xef\xbb\xbf" + raw, raw + b"\r", b"\xef\xbb\xbf" + raw + b"\r"):
        assert parse_record(variant, 1).external_id == "INV-1"


@pytest.mark.parametrize("raw", [b"", b"   ", b"\r", b"\xef\xbb\xbf"])
def test_empty_line_is_rejected_as_a_whole(raw: bytes) -> None:
    assert rejection(raw).field == "(line)"


def test_defaults_and_empty_optionals() -> None:
    rec = parse(record(notes="", customer={"external_id": "C", "email": "a@b.co", "name": " ", "locale": None}))
    assert (rec.status, rec.prices, rec.extra, rec.issue_date, rec.due_date) == ("draft", "net", {}, None, None)
    assert (rec.notes, rec.customer.name, rec.customer.locale, rec.customer.address) == (None, None, "en", None)


def test_full_record_fields() -> None:
    doc = record(status="paid", prices="gross", issue_date="2026-03-31", due_date="2026-04-30", notes="Danke",
                 extra={"po": "PO-1", "rate": 0.1, "deep": {"x": [1, None]}}, unknown=[1, 2])
    doc["customer"] = {"external_id": "CUST-0042", "email": "zoë@exämple.de", "name": "Zoë Ångström",
                       "company": "株式会社", "locale": "pt-BR",
                       "address": {"line1": "Hauptstraße 42", "city": "Köln", "country": "DE", "line2": ""}}
    rec = parse(doc)
    assert (rec.status, rec.prices, rec.notes) == ("paid", "gross", "Danke")
    assert rec.issue_date == datetime.date(2026, 3, 31) and rec.due_date == datetime.date(2026, 4, 30)
    assert rec.customer.name == "Zoë Ångström" and rec.customer.locale == "pt-BR"
    assert rec.customer.address is not None
    assert (rec.customer.address.city, rec.customer.address.country, rec.customer.address.line2) == ("Köln", "DE", None)
    assert rec.extra == {"po": "PO-1", "rate": 0.1, "deep": {"x": [1, None]}}
    assert type(rec.extra["rate"]) is float, "extra passes through untouched, as orjson reads it"


# --- amounts: exact, and strictly checked ----------------------------------------------------------------------


def line_with(**amounts: str) -> bytes:
    """A valid record whose single line has the given amounts as raw JSON text."""
    fields = {"quantity": "1", "unit_price": '"1.00"', "tax_rate": '"19"', **amounts}
    body = ", ".join(f'"{k}": {v}' for k, v in fields.items())
    return (b'{"external_id": "X", "customer": {"external_id": "C", "email": "a@b.co"}, "currency": "EUR", '
            b'"lines": [{"title": "t", ' + body.encode() + b"}]}")


@pytest.mark.parametrize("text", ["0.1", "0.2", "0.3", "1.10", "1.1", "19.99", "123456789.123456789", "-2.5",
                                  "7.7", "1E+2", "2.5e-3", "100", "12345678901", "0.000000000001"])
def test_json_number_equals_its_text(text: str) -> None:
    keys = ("unit_price", "quantity", "tax_rate") if 0 < D(text) <= 1000 else ("unit_price",)
    for key in keys:
        rec = parse(line_with(**{key: text}))
        value = getattr(rec.lines[0], key)
        assert value == D(text)
        if "E" not in text and "e" not in text:
            assert format(value, "f") == text, "the Decimal keeps the source's digits (1.10 stays 1.10)"


def test_float_artifacts_never_reach_totals() -> None:
    rec = parse(line_with(quantity="3", unit_price="0.1", tax_rate="0"))
    assert rec.lines[0].unit_price == D("0.1")
    assert rec.totals() == Totals(D("0.30"), D("0.00"), D("0.30"))
    # 0.1 + 0.2 as a float prints 0.30000000000000004: 17 places is refused, not silently rounded.
    assert rejection(line_with(unit_price="0.30000000000000004")).field == "lines[0].unit_price"


@pytest.mark.parametrize(
    ("text", "field", "words"),
    [
        ('"NaN"', "unit_price", "finite"), ('"-Infinity"', "unit_price", "finite"), ('"sNaN"', "tax_rate", "finite"),
        ('"1e999999"', "unit_price", "range"), ("1e15", "unit_price", "range"),
        ('"1000000000000"', "unit_price", "range"), ("1e999999", "unit_price", "range"),
        ("NaN", "unit_price", "number"),
        ("1000000000000", "quantity", "range"), ("100000000000000000000000", "unit_price", "range"),
        ('"1_000"', "unit_price", "decimal"), ('" 1"', "unit_price", "decimal"), ('""', "unit_price", "decimal"),
        ('"0x10"', "quantity", "decimal"), ("true", "quantity", "boolean"), ("false", "tax_rate", "boolean"),
        ("null", "unit_price", "null"), ("[1]", "unit_price", "array"), ('{"v": 1}', "tax_rate", "object"),
        ('"1.0000000000001"', "quantity", "decimal places"), ("0.0000000000001", "tax_rate", "decimal places"),
        ("0", "quantity", "greater than 0"), ('"-1"', "quantity", "greater than 0"), ('"-0.5"', "tax_rate", "between"),
        ('"1000.01"', "tax_rate", "between"),
    ],
)
def test_bad_amounts(text: str, field: str, words: str) -> None:
    err = rejection(line_with(**{field: text}))
    assert err.field == f"lines[0].{field}"
    assert words in err.reason


def test_amount_edge_values_accepted() -> None:
    rec = parse(line_with(quantity='"999999999999.999999999999"', unit_price='"-999999999999"', tax_rate='"1000"'))
    assert rec.lines[0].quantity == D("999999999999.999999999999")
    rec = parse(line_with(unit_price='"0E+99"', tax_rate='"-0"'))
    assert str(rec.lines[0].unit_price) == "0" and rec.lines[0].tax_rate == 0
    assert parse(line_with(unit_price='"1.50000000000000000000"')).lines[0].unit_price == D("1.5")


# --- first problem, paths, messages ----------------------------------------------------------------------------


def test_first_problem_wins_in_document_order() -> None:
    assert rejection(record(external_id="", currency="XYZ")).field == "external_id"
    assert rejection(record(currency="XYZ", status="nope")).field == "currency"
    doc = record(lines=[{"title": "", "quantity": 0}, {"title": "t", "quantity": "x"}])
    assert rejection(doc).field == "lines[0].title"
    doc = record(lines=[{"title": "t", "quantity": 1, "unit_price": "1", "tax_rate": "0"}, {"title": "t"}])
    assert rejection(doc).field == "lines[1].quantity"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"external_id": " INV-1"}, "external_id"),
        ({"external_id": "INV\t1"}, "external_id"),
        ({"customer": {"external_id": "C", "email": "a@b"}}, "customer.email"),
        ({"customer": {"external_id": "C", "email": "a b@c.de"}}, "customer.email"),
        ({"customer": {"external_id": "C" * 101, "email": "a@b.co"}}, "customer.external_id"),
        ({"customer": {"external_id": "C", "email": "a@b.co", "locale": "english language"}}, "customer.locale"),
        ({"customer": {"external_id": "C", "email": "a@b.co", "address": {"country": "de"}}},
         "customer.address.country"),
        ({"customer": {"external_id": "C", "email": "a@b.co", "address": {"city": 5}}}, "customer.address.city"),
        ({"customer": []}, "customer"),
        ({"currency": None}, "currency"),
        ({"currency": "QQQ"}, "currency"),
        ({"issue_date": "2026-3-31"}, "issue_date"),
        ({"issue_date": "20260331"}, "issue_date"),
        ({"due_date": "2026-13-01"}, "due_date"),
        ({"status": "Sent"}, "status"),
        ({"status": "paid"}, "issue_date"),
        ({"prices": 1}, "prices"),
        ({"notes": "bell\x07"}, "notes"),
        ({"lines": None}, "lines"),
        ({"lines": "x"}, "lines"),
        ({"extra": "x"}, "extra"),
    ],
)
def test_field_paths(changes: dict[str, Any], field: str) -> None:
    assert rejection(record(**changes)).field == field


def test_messages_quote_at_most_80_characters_and_give_a_fix() -> None:
    err = rejection(record(external_id="Z" * 5000))
    assert "Z" * 81 not in str(err)
    err = rejection(record(currency="Q" * 500))
    assert "Q" * 81 not in str(err) and "ISO 4217" in err.reason and err.fix
    err = rejection(record(currency="eur"))
    assert '"EUR"' in err.fix


def test_invalid_utf8_and_malformed_json() -> None:
    err = rejection(orjson.dumps(record(notes="Köln")).replace("ö".encode(), b"\xf6"))
    assert err.field == "(line)" and "UTF-8" in err.reason
    err = rejection(orjson.dumps(record())[:-5])
    assert err.field == "(line)" and "truncated" in err.fix
    assert rejection(b'{"a": 1,}').field == "(line)"
    assert rejection(b'{"external_id": "\\ud800"}').field == "external_id"  # lone surrogate: named precisely


def test_never_raises_anything_but_invalid_record() -> None:
    raw = orjson.dumps(record(notes="Zoë 東京 🎉", lines=[{"title": "t", "quantity": 2.5, "unit_price": 0.1,
                                                            "tax_rate": 7}]))
    variants = [raw[:i] for i in range(len(raw))] + [raw[:i] + b"\x80" + raw[i + 1:] for i in range(len(raw))]
    variants += [raw[:i] + raw[i + 1:] for i in range(len(raw))]
    for variant in variants:
        with contextlib.suppress(InvalidRecord):  # a Record or InvalidRecord; anything else fails the test
            parse_record(variant, 1)
        peeked = peek_external_id(variant)
        if variant.startswith(b'{"external_id":"INV-1"'):
            assert peeked == "INV-1"
        assert peeked is None or (isinstance(peeked, str) and 0 < len(peeked) <= 100)


# --- totals of hand-computed invoices ---------------------------------------------------------------------------


def test_invoice_totals_net_eur_with_discount() -> None:
    rec = parse(record(lines=[
        {"title": "Consulting", "quantity": 10, "unit_price": "150.00", "tax_rate": "19"},  # 1500.00 + 285.00
        {"title": "Books", "quantity": 3, "unit_price": "0.335", "tax_rate": "7"},  # 1.005 -> 1.01 + 0.07
        {"title": "Discount", "quantity": 1, "unit_price": "-150.005", "tax_rate": "19"},  # -150.01 - 28.50
    ]))
    assert rec.totals() == Totals(D("1351.00"), D("256.57"), D("1607.57"))
    assert [str(t.gross) for t in rec.line_totals()] == ["1785.00", "1.08", "-178.51"]


def test_invoice_totals_gross_jpy() -> None:
    rec = parse(record(currency="JPY", prices="gross", lines=[
        {"title": "東京 hosting", "quantity": 1, "unit_price": "1000", "tax_rate": "10"},  # 909 + 91
        {"title": "Snacks", "quantity": 3, "unit_price": "99.5", "tax_rate": "8"},  # 298.5 -> 299: 277 + 22
    ]))
    assert rec.totals() == Totals(D("1186"), D("113"), D("1299"))
    assert str(rec.totals().net) == "1186"


def test_invoice_totals_kwd_three_decimals() -> None:
    rec = parse(record(currency="KWD", lines=[
        {"title": "Support", "quantity": 2, "unit_price": "10.0005", "tax_rate": "7"},  # 20.001 + 1.400
        {"title": "Parts", "quantity": "0.5", "unit_price": 3.333, "tax_rate": 0},  # 1.6665 -> 1.667
    ]))
    assert rec.totals() == Totals(D("21.668"), D("1.400"), D("23.068"))


# --- peek_external_id -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'{"external_id": "INV-7", "customer": {"external_id": "C"}}', "INV-7"),
        (b'{"customer": {"external_id": "C"}, "external_id": "INV-8"}', "INV-8"),  # nested id is not it
        (b'\xef\xbb\xbf{"external_id": "INV-\\u00e9", "lines": [', "INV-\u00e9"),  # BOM, truncated after
        (b'{"lines": [{"external_id": "L"}], "external_id": "INV-9", "x": "\xff"', "INV-9"),
        (b'{"external_id": "' + b"Z" * 300 + b'"}', "Z" * 100),
        (b'{"external_id": 12}', None),
        (b'{"external_id": ""}', None),
        (b'{"external_id": "INV-', None),
        (b'["external_id", "INV-1"]', None),
        (b"\xff\xfe\x00", None),
        (b"", None),
    ],
)
def test_peek_external_id(raw: bytes, expected: str | None) -> None:
    assert peek_external_id(raw) == expected


def test_fast_constructors_build_ordinary_frozen_objects() -> None:
    import dataclasses

    from bulk._frozen import constructor
    from bulk._record_types import Line, _new_line

    args = ("Title", None, Decimal("2"), Decimal("-1.50"), Decimal("19"), "SKU-1")
    fast, slow = _new_line(*args), Line(*args)
    assert type(fast) is Line and fast == slow and repr(fast) == repr(slow) and hash(fast) == hash(slow)
    assert dataclasses.astuple(fast) == args
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.title = "x"  # type: ignore[misc]

    @dataclasses.dataclass(slots=True)
    class Mutable:
        a: int

    with pytest.raises(TypeError):
        constructor(Mutable)
