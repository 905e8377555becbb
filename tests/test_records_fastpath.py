"""The fast path of bulk.records against its general path: the same Record, or the fast path steps aside.

`_fast_record` (msgspec schema + a few checks) must never accept a line the general path refuses, and
never build a Record that differs from the general path's, down to each Decimal's exponent (compared by
repr, since Decimal("1.10") == Decimal("1.1")). Run over the generator's output (several seeds), the
hostile corpus, and mutations aimed at every normalisation the general path does.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from bulk.errors import InvalidRecord
from bulk.generate import generate
from bulk.records import Record, _fast_record, _parse_general, parse_record

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
HOSTILE = (FIXTURES / "hostile.ndjson").read_bytes().split(b"\n")


def general(raw: bytes, ln: int) -> Record | InvalidRecord:
    try:
        return _parse_general(raw, ln)
    except InvalidRecord as exc:
        return exc


def check(raw: bytes, ln: int = 7) -> Record | None:
    """Both paths on ``raw``: equal Records, or the fast path returned None. Returns the fast result."""
    fast = _fast_record(raw, ln)
    slow = general(raw, ln)
    if fast is not None:
        assert isinstance(slow, Record), f"fast path accepted a line the general path refuses: {raw[:200]!r}: {slow}"
        assert repr(fast) == repr(slow) and fast == slow, raw[:200]
        assert [type(item.quantity) for item in fast.lines] == [type(item.quantity) for item in slow.lines]
    # parse_record is the two together: the general path's verdict stands whenever the fast one steps aside
    try:
        combined: Record | InvalidRecord = parse_record(raw, ln)
    except InvalidRecord as exc:
        combined = exc
    assert repr(combined) == repr(slow) and str(combined) == str(slow)
    return fast


@pytest.mark.parametrize("seed", [0, 1, 7, 2026])
def test_generated_records_take_the_fast_path_with_identical_results(seed: int) -> None:
    taken = [check(raw.rstrip(b"\n"), no) for no, raw in enumerate(generate(1500, seed), 1)]
    assert all(rec is not None for rec in taken)  # the common shape never falls back


def test_hostile_corpus_lines_agree() -> None:
    fell_back = sum(check(raw, no) is None for no, raw in enumerate(HOSTILE, 1))
    assert fell_back > 10  # the corpus is mostly bad lines: the fast path must have stepped aside for them


BASE: dict[str, Any] = orjson.loads(next(generate(1, 3)))
BASE["customer"]["address"] = {"line1": "Hauptstraße 42", "city": "Köln", "country": "DE"}


def _with(path: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(BASE)
    *parents, last = path.split(".")
    node: Any = doc
    for step in parents:
        node = node[int(step)] if step.isdigit() else node[step]
    if value is _DROP:
        node.pop(int(last) if last.isdigit() else last, None)
    else:
        node[int(last) if last.isdigit() else last] = value
    return doc


_DROP = object()
_STRINGS = ["", " ", "\u3000", "\x85", "\x85x", " x", "x ", "\tx", "x\ny", "x\ty", "\u2028x", "\x7f", "é" * 185,
            "é" * 186, "🎨" * 100, "🎨" * 101, "A" * 255, "A" * 256, None, 5, True, [], {}, _DROP]
_AMOUNTS = ["1", "1.10", "1.1", "-0", "0", "+1", ".5", "5.", "1e3", "1E+3", "1_0", " 1", "1000", "1000.0001", "-0.5",
            "NaN", "-Infinity", "1.0000000000000", "0.0000000000001", "999999999999", "1000000000000",
            0, 3, -2, 10**12, 10**13, 10**30, True, None, [], "\u0661", _DROP]  # an Arabic-Indic digit one
MUTATIONS: list[tuple[str, Any]] = [
    *[(path, value) for path in ("external_id", "customer.external_id", "customer.name", "customer.company",
                                 "customer.email", "customer.locale", "notes", "lines.0.title",
                                 "lines.0.description", "lines.0.item_ref", "customer.address.city",
                                 "customer.address.line2")
      for value in _STRINGS],
    *[(f"lines.0.{key}", value) for key in ("quantity", "unit_price", "tax_rate") for value in _AMOUNTS],
    *[("customer.email", v) for v in ("a@b", "a@b.c", "ä@ö.de", "a@@b.c", "a b@c.d", "x" * 65 + "@a.de")],
    *[("customer.locale", v) for v in ("de", "pt-BR", "pt_BR", "EN", "e", "english-language-x")],
    *[("currency", v) for v in ("EUR", "eur", "XXX", "JPY", "", None, _DROP)],
    *[("customer.address.country", v) for v in ("DE", "de", "XX", "", None, _DROP)],
    *[("customer.address", v) for v in (None, {}, [], "x", _DROP)],
    *[("status", v) for v in ("draft", "sent", "paid", "DRAFT", "", None, _DROP)],
    *[("prices", v) for v in ("net", "gross", "Net", None, _DROP)],
    *[("issue_date", v) for v in ("2024-02-29", "2026-02-29", "20260301", "2026-3-01", "0000-01-01", " 2026-03-01",
                                  None, 5, _DROP)],
    *[("due_date", v) for v in ("2026-12-31", "2026-13-01", None)],
    *[("extra", v) for v in ({}, {"a": 1.5, "b": [1, {"c": None}], "d": "x"}, {"n": 12345678901234567890123},
                             None, [], "x", _DROP)],
    *[("lines", v) for v in ([], None, {}, [None], _DROP)],
    ("unknown_key", 1), ("customer.phone", "123"), ("lines.0.sku", "x"),
]


@pytest.mark.parametrize("path,value", MUTATIONS)
@pytest.mark.parametrize("status", ["draft", "sent"])
def test_mutations_agree(path: str, value: Any, status: str) -> None:
    doc = _with(path, value)
    if path != "status":
        doc["status"] = status
    check(json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode())  # json: ints past 64 bits too


RAW_CASES = [
    b'{"currency":"XXX",' + orjson.dumps(BASE)[1:],  # duplicate keys: the last wins on both paths
    orjson.dumps(BASE)[:-1] + b',"currency":"eur"}',
    orjson.dumps(BASE)[:-1] + b',"extra":{"k":1,"k":2}}',
    orjson.dumps(BASE).replace(b'"quantity":', b'"quantity":1.10,"quantity":', 1),
    orjson.dumps(BASE).replace(b'"quantity":', b'"quantity":"1",  "quantity":', 1),
    b"\xef\xbb\xbf" + orjson.dumps(BASE), orjson.dumps(BASE) + b"\r", orjson.dumps(BASE) + b"  ",
    b" " + orjson.dumps(BASE),
    orjson.dumps(BASE)[:-1] + b',"extra":{"s":"\\ud800"}}', orjson.dumps(BASE)[:-1] + b',"extra":{"f":1e99999}}',
    orjson.dumps(BASE)[:-1] + b',"extra":{"d":' + b"[" * 2000 + b"]" * 2000 + b"}}",
    orjson.dumps(BASE).replace(b'"title":"', b'"title":"\\u0000', 1),
    orjson.dumps(BASE).replace(b'"title":"', b'"title":"\\ud83c\\udfa8', 1),
    orjson.dumps(BASE).replace(b'"title":"', b'"title":"\\udfa8', 1),
    orjson.dumps(BASE).replace(b'"quantity":', b'"quantity":1.5e1,"x":', 1),
    orjson.dumps(BASE)[:-1], orjson.dumps(BASE) + b"{}", b"[]", b"null", b"",
]


@pytest.mark.parametrize("raw", RAW_CASES)
def test_raw_cases_agree(raw: bytes) -> None:
    check(raw)


def test_float_amounts_step_aside_to_keep_their_text() -> None:
    raw = orjson.dumps({**BASE, "lines": [{**BASE["lines"][0], "unit_price": 0}]}).replace(b'"unit_price":0',
                                                                                           b'"unit_price":1.10')
    assert _fast_record(raw, 1) is None
    assert str(parse_record(raw, 1).lines[0].unit_price) == "1.10"


def test_a_customer_met_again_is_reused_and_a_changed_one_is_judged_anew() -> None:
    """The fast path keeps each checked customer: the next invoice of an equal customer gets the
    very same (immutable) Customer; one that differs in any field, even after its twin was
    kept, takes the checks (and the general path's verdict) of a customer never met."""
    first, second = (_with("external_id", ext) for ext in ("INV-A", "INV-B"))
    a, b = check(orjson.dumps(first)), check(orjson.dumps(second))
    assert a is not None and b is not None and a.customer is b.customer
    for path, value in [("customer.name", "Jane\x00Doe"), ("customer.address.country", "XX"),
                        ("customer.address.city", " Köln"), ("customer.external_id", " C-1"),
                        ("customer.company", "\u3000"), ("customer.locale", None)]:
        check(orjson.dumps(_with(path, value)))  # the fast path steps aside or agrees with the general path
    changed = check(orjson.dumps(_with("customer.name", "Jane Roe")))
    assert changed is not None and changed.customer.name == "Jane Roe" and changed.customer is not a.customer
    assert check(orjson.dumps(_with("customer.name", "Jane\x00Doe"))) is None


def test_a_customer_is_known_by_its_text_and_one_written_otherwise_is_decoded_anew() -> None:
    """The customer cache is keyed by the customer's JSON text: the same text gives the very same
    Customer, the same customer written in another key order or spacing an equal one (decoded and
    checked again), and a text the checks refused is never kept (the general path's verdict stands)."""
    doc = _with("external_id", "INV-T1")
    a = check(orjson.dumps(doc))
    customer = dict(reversed(list(doc["customer"].items())))
    reordered = orjson.dumps({**doc, "external_id": "INV-T2", "customer": customer}).replace(b'":', b'" : ')
    b = check(reordered)
    assert a is not None and b is not None and a.customer == b.customer and a.customer is not b.customer
    c = check(reordered.replace(b"INV-T2", b"INV-T3"))
    assert c is not None and c.customer is b.customer
    bad = orjson.dumps(_with("customer.address.country", "XX"))
    for _ in range(2):  # the second time too: a refused customer is not kept
        assert check(bad) is None


def test_a_full_customer_cache_drops_its_oldest_customer_only() -> None:
    """Bounded first in, first out: with more customers than room, the next new one pushes out the
    one kept longest, and every other stays (emptying the whole cache made 72% of the benchmark's
    invoices decode their customer anew)."""
    from bulk import _record_fast

    kept = _record_fast._CUSTOMERS_KEPT
    docs = [_with("customer.external_id", f"C-FIFO-{k}") for k in range(kept + 1)]
    first = [check(orjson.dumps({**doc, "external_id": f"INV-F{k}"})) for k, doc in enumerate(docs[:kept])]
    newest = check(orjson.dumps({**docs[kept], "external_id": "INV-F-NEW"}))
    assert newest is not None and len(_record_fast._CUSTOMERS) == kept
    # met again newest first (hits insert nothing): every one but the oldest is the very Customer kept
    order = range(kept, -1, -1)
    again = {k: check(orjson.dumps({**docs[k], "external_id": f"INV-G{k}"})) for k in order}
    made = {**dict(enumerate(first)), kept: newest}
    reused = {k: again[k] is not None and made[k] is not None and again[k].customer is made[k].customer  # type: ignore[union-attr]
              for k in order}
    assert reused.pop(0) is False and all(reused.values())


@pytest.mark.parametrize("locale", ["en", "de-DE", "pt_BR", "zh-Hant-TW", "EN", "e", "english", "en-", "en--US",
                                    " en", "en\n", "", "x" * 36, "de-" + "a" * 9, "ja-JP", "ja-JP"])
def test_a_locale_is_matched_by_the_fast_path_as_by_the_general_path(locale: str) -> None:
    """The locale's pattern left the schema for a check in Python (once per distinct tag): each
    tag, met for the first time or again, gets the general path's verdict."""
    for k in range(2):  # the second time, a tag that passed is known
        doc = _with("customer.locale", locale)
        doc["customer"]["external_id"] = f"C-LOC-{k}"
        fast = check(orjson.dumps(doc))
        if fast is not None:
            assert fast.customer.locale == locale


@pytest.mark.parametrize("email", ["a@b.c", "jane.doe+x@mail.example.com", "ä@ö.de", "x" * 64 + "@a.de",
                                   "x" * 65 + "@a.de", "a@b", "@b.c", "a@.b.c", "a@b.c.", "a@b..c", "a@@b.c",
                                   "a@b@c.d", "a b@c.d", "a@b c.d", "a\tb@c.d", "a\u00a0b@c.d", "a\u200b@b.c",
                                   "a@b.c\x7f", "a@b\u3000.c", "a@b.c\n", "\ud800@b.c", "", "a.b@c.d"])
def test_an_email_is_judged_by_the_fast_path_as_by_the_general_path(email: str) -> None:
    """The e-mail's pattern left the schema for a check with str methods: every address gets the
    general path's verdict, and a plain valid one still takes the fast path."""
    doc = _with("customer.email", email)
    fast = check(json.dumps(doc, ensure_ascii=True, separators=(",", ":")).encode())  # a lone surrogate escaped
    if email in ("a@b.c", "jane.doe+x@mail.example.com", "ä@ö.de", "x" * 64 + "@a.de", "a.b@c.d"):
        assert fast is not None and fast.customer.email == email


@pytest.mark.parametrize("text", ["Wartung · Premium", " padded ", "tab\there", "line\nbreak", "\u00a0nbsp",
                                  "bell\x07"])
def test_a_string_kept_for_one_field_is_judged_anew_for_another(text: str) -> None:
    """The kept strings (_TITLES, _TEXTS, _REFS) are per rule: a text met and passed as a description
    or a title is still refused as an item ref (or a title) when that field's rule refuses it; met
    again in each field, every one gets the general path's verdict."""
    for _ in range(2):  # the second time, whatever passed is kept
        for path in ("notes", "lines.0.description", "lines.0.title", "lines.0.item_ref"):
            check(orjson.dumps(_with(path, text)))


def test_full_string_caches_are_emptied_and_still_take_none() -> None:
    from bulk import _record_fast

    kept = _record_fast._STRINGS_KEPT
    for k in range(kept + 2):
        doc = _with("lines.0.title", f"Title {k}")
        doc["lines"][0]["description"] = f"Description {k}"
        doc["lines"][0]["item_ref"] = f"REF-{k}"
        doc["notes"] = f"Notes {k}"
        assert check(orjson.dumps(doc)) is not None
    assert len(_record_fast._TITLES) <= kept and len(_record_fast._REFS) <= kept and len(_record_fast._TEXTS) <= kept
    assert None in _record_fast._TEXTS and None in _record_fast._REFS
    doc = _with("lines.0.description", None)
    doc["lines"][0]["item_ref"] = None
    fast = check(orjson.dumps(doc))
    assert fast is not None and fast.lines[0].description is None and fast.lines[0].item_ref is None
