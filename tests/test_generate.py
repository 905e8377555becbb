"""The synthetic invoice generator (bulk.generate): valid, deterministic, varied as promised."""

from __future__ import annotations

import re
from collections import Counter
from decimal import Decimal
from pathlib import Path

import orjson
import pytest

from bulk.generate import generate
from bulk.records import Record, parse_record

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
N = 3000


@pytest.fixture(scope="module")
def lines() -> list[bytes]:
    return list(generate(N, seed=1))


@pytest.fixture(scope="module")
def records(lines: list[bytes]) -> list[Record]:
    return [parse_record(line[:-1], no) for no, line in enumerate(lines, 1)]


@pytest.mark.parametrize(("n", "seed"), [(0, 0), (1, 0), (7, 5), (500, -3), (2000, 123456789)])
def test_every_line_is_valid_and_newline_terminated(n: int, seed: int) -> None:
    out = list(generate(n, seed))
    assert len(out) == n
    for no, line in enumerate(out, 1):
        assert line.endswith(b"\n") and line.count(b"\n") == 1
        assert parse_record(line[:-1], no).external_id == f"INV-{seed}-{no:07d}"


def test_deterministic_per_seed() -> None:
    assert list(generate(300, 42)) == list(generate(300, 42))
    assert [x.split(b'"customer"')[1] for x in generate(50, 1)] != [x.split(b'"customer"')[1] for x in generate(50, 2)]
    assert list(generate(50, 1)) != list(generate(50, -1))


def test_fixture_is_generator_output_for_seed_1() -> None:
    assert (FIXTURES / "invoices.ndjson").read_bytes() == b"".join(generate(500, 1))


def test_external_ids_unique(records: list[Record]) -> None:
    assert len({r.external_id for r in records}) == N


def test_customers_shared_and_stable(records: list[Record]) -> None:
    by_id: dict[str, set[object]] = {}
    for r in records:
        assert re.fullmatch(r"CUST-\d{6}", r.customer.external_id)
        by_id.setdefault(r.customer.external_id, set()).add(r.customer)
    assert 0.8 * N / 10 <= len(by_id) <= N / 10
    assert all(len(versions) == 1 for versions in by_id.values()), "email, name, address stable per customer"
    emails = {c.email for versions in by_id.values() for c in versions}  # type: ignore[attr-defined]
    assert len(emails) == len(by_id)
    assert {parse_record(x[:-1], 1).customer.external_id for x in generate(9, 3)} == {"CUST-000001"}


def test_currencies_varied(records: list[Record]) -> None:
    counts = Counter(r.currency for r in records)
    assert set(counts) == {"EUR", "USD", "GBP", "CHF", "JPY", "KWD"}
    assert counts["EUR"] + counts["USD"] + counts["GBP"] > 0.6 * N
    assert min(counts.values()) > 0.03 * N


def test_lines_items_quantities_and_rates(records: list[Record]) -> None:
    sizes = Counter()
    for r in records:
        catalogue = [ln for ln in r.lines if ln.item_ref is not None]
        sizes[len(catalogue)] += 1
        refs = [ln.item_ref for ln in catalogue]
        assert len(refs) == len(set(refs)), "no item_ref twice in one invoice"
        for ln in catalogue:
            assert re.fullmatch(r"SKU-0(0[1-9]|[1-4]\d|50)", ln.item_ref)  # type: ignore[arg-type]
            assert ln.quantity == int(ln.quantity) and 1 <= ln.quantity <= 20
            assert ln.unit_price > 0
        assert all(ln.tax_rate in (0, 7, 19, 20) for ln in r.lines)
        assert len(r.lines) - len(catalogue) <= 1  # at most one discount line
    assert set(sizes) == {1, 2, 3, 4, 5}


def test_amounts_are_decimal_strings_some_fine_grained(lines: list[bytes]) -> None:
    places = Counter()
    for line in lines[:500]:
        for ln in orjson.loads(line)["lines"]:
            assert type(ln["unit_price"]) is str and type(ln["tax_rate"]) is str
            assert type(ln["quantity"]) is int  # integers are exact in JSON (and orjson) already
            places[len(ln["unit_price"].partition(".")[2])] += 1
    assert places[3] and places[4] and places[2]


def test_discounts_keep_totals_positive(records: list[Record]) -> None:
    discounted = [r for r in records if any(ln.unit_price < 0 for ln in r.lines)]
    assert len(discounted) > 0.05 * N
    for r in records:
        t = r.totals()
        assert t.net > 0 and t.tax >= 0 and t.gross > 0, r.external_id
    for r in discounted:
        first, discount = r.lines[0], r.lines[-1]
        assert discount.quantity == 1 and discount.tax_rate == first.tax_rate
        assert -discount.unit_price <= first.quantity * first.unit_price * Decimal("0.2")


def test_statuses_prices_and_dates(records: list[Record]) -> None:
    statuses = Counter(r.status for r in records)
    assert statuses["draft"] > statuses["sent"] > statuses["paid"] > 0
    assert all(r.issue_date is not None for r in records if r.status != "draft")
    assert any(r.issue_date is None for r in records) and any(r.due_date for r in records)
    assert all(r.due_date > r.issue_date for r in records if r.due_date and r.issue_date)
    prices = Counter(r.prices for r in records)
    assert prices["net"] > prices["gross"] > 0.1 * N


def test_unicode_present(lines: list[bytes]) -> None:
    text = b"".join(lines[:300]).decode("utf-8")
    for needle in ("Köln", "東京", "Ü", "—"):
        assert needle in text
    assert re.search("[\U0001F300-\U0001FAFF]", text), "an emoji now and then"
