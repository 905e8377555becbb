"""Tally.add_totals (invoice totals batched, summed when read) against CurrencyTotals.add one by one."""

from __future__ import annotations

import random
from decimal import Decimal

from bulk.money import CurrencyTotals, Totals
from bulk.tally import Tally


def _amounts(rnd: random.Random, currency: str) -> Totals:
    places = {"EUR": 2, "JPY": 0, "KWD": 3}[currency]
    net = Decimal(rnd.randint(-10**9, 10**12)).scaleb(-places)
    if rnd.random() < 0.1:
        net = Decimal("-0").scaleb(-places)
    tax = Decimal(rnd.randint(0, 10**9)).scaleb(-places - rnd.choice((0, 0, 1)))  # now and then a longer one
    return Totals(net, tax, net + tax)


def _exact(totals: CurrencyTotals) -> dict[str, tuple[int, str, str, str]]:
    """Every count and amount with its exponent (to_json quantizes: it would hide a difference)."""
    return {code: (n, str(t.net), str(t.tax), str(t.gross)) for code, (n, t) in totals._by_code.items()}


def test_batched_totals_equal_one_by_one_to_the_digit_however_often_read() -> None:
    rnd = random.Random(5)
    tally, reference = Tally(), CurrencyTotals()
    for i in range(3000):
        currency = rnd.choice(("EUR", "EUR", "JPY", "KWD"))
        totals = _amounts(rnd, currency)
        tally.add_totals(currency, totals)
        reference.add(currency, totals)
        if rnd.random() < 0.002 or i == 2999:  # a checkpoint or a summary reads them (a batch also fills)
            assert _exact(tally.totals) == _exact(reference)
            assert tally.to_json()["totals"] == reference.to_json()
    assert Tally.from_json(tally.to_json()).to_json() == tally.to_json()  # the checkpoint's round trip


def test_merge_and_round_trip_fold_what_is_pending() -> None:
    a, b = Tally(), Tally()
    a.add_totals("EUR", Totals(Decimal("1.00"), Decimal("0.19"), Decimal("1.19")))
    b.add_totals("EUR", Totals(Decimal("2.50"), Decimal("0.475"), Decimal("2.975")))
    b.add_totals("JPY", Totals(Decimal("100"), Decimal("10"), Decimal("110")))
    a.merge(b)
    assert a.to_json()["totals"] == {
        "EUR": {"invoices": 2, "net": "3.50", "tax": "0.67", "gross": "4.17"},  # to_json rounds to the minor unit
        "JPY": {"invoices": 1, "net": "100", "tax": "10", "gross": "110"},
    }
    assert _exact(a.totals)["EUR"] == (2, "3.50", "0.665", "4.165")
    assert Tally.from_json(a.to_json()).to_json() == a.to_json()


def test_a_batch_is_folded_when_full_so_memory_stays_bounded() -> None:
    tally = Tally()
    one = Totals(Decimal("1.00"), Decimal("0.19"), Decimal("1.19"))
    for _ in range(5000):
        tally.add_totals("EUR", one)
        assert len(tally._pending.get("EUR", ())) < 1024
    assert tally.to_json()["totals"]["EUR"] == {"invoices": 5000, "net": "5000.00", "tax": "950.00",
                                                "gross": "5950.00"}
