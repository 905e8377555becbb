"""lines_totals (the hot path's invoice totals) against the plain money rule, digit for digit.

The plain rule is `Totals.zero` plus `line_totals` line by line (each line quantized and made
unsigned by `quantize`). Compared as strings, so exponents and the sign of a zero count: random
amounts at every scale the parser accepts (up to 12 decimals, up to 10^12), every currency
exponent, both price modes, many lines, discounts, lines that round to -0 and lines that cancel.
"""

from __future__ import annotations

import random
from decimal import Decimal
from typing import NamedTuple

import pytest

from bulk.money import Totals, line_totals, lines_totals


class L(NamedTuple):
    quantity: Decimal
    unit_price: Decimal
    tax_rate: Decimal


def plain(lines: list[L], prices: str, currency: str) -> tuple[str, str, str]:
    total = Totals.zero(currency)
    for ln in lines:
        total = total + line_totals(ln.quantity, ln.unit_price, ln.tax_rate, prices, currency)
    return str(total.net), str(total.tax), str(total.gross)


def fast(lines: list[L], prices: str, currency: str) -> tuple[str, str, str]:
    got = lines_totals(lines, prices, currency)
    assert got.gross == got.net + got.tax
    return str(got.net), str(got.tax), str(got.gross)


def _amount(rng: random.Random, *, signed: bool, high: int = 12) -> Decimal:
    places = rng.choice((0, 0, 1, 2, 2, 3, 4, 6, 12))
    digits = rng.randint(1, high + places)
    value = Decimal(rng.randint(0, 10**digits - 1)).scaleb(-places)
    while value.adjusted() >= 12:
        value = value.scaleb(-1)
    return -value if signed and rng.random() < 0.3 else value


@pytest.mark.parametrize("currency", ["EUR", "JPY", "KWD", "CLF"])
@pytest.mark.parametrize("prices", ["net", "gross"])
def test_random_lines_at_every_scale_agree_with_the_plain_rule(currency: str, prices: str) -> None:
    rng = random.Random(f"{currency}-{prices}")
    for _ in range(300):
        lines = []
        for _ in range(rng.choice((1, 1, 2, 3, 5, 40))):
            quantity = _amount(rng, signed=False) or Decimal(1)
            rate = min(_amount(rng, signed=False, high=3), Decimal(1000))
            lines.append(L(quantity, _amount(rng, signed=True), rate))
        assert fast(lines, prices, currency) == plain(lines, prices, currency), (lines, prices, currency)


@pytest.mark.parametrize("currency", ["EUR", "JPY", "KWD"])
@pytest.mark.parametrize("prices", ["net", "gross"])
def test_zeros_minus_zeros_cancellations_and_extremes_agree(currency: str, prices: str) -> None:
    d = Decimal
    tiny = d("0.000000000001")
    cases = [
        [L(d(1), d("-0.0001"), d(19))],  # rounds to -0 in every exponent
        [L(d(1), d("-0.0001"), d(19)), L(d(3), d("-0.0002"), d(0))],  # only -0s
        [L(d(1), d("12.34"), d(19)), L(d(1), d("-12.34"), d(19))],  # a discount that cancels the line
        [L(d(2), d("-5"), d(7)), L(d(1), d(10), d(7)), L(d(1), d("-0.0004"), d(7))],
        [L(d("999999999999"), d("999999999999.999999999999"), d(1000))],  # the largest product
        [L(tiny, tiny, d(0)), L(tiny, -tiny, d("999.999999999999"))],
        [L(d(1), d("0.005"), d("7")), L(d(1), d("-0.005"), d("7")), L(d(3), d("0.335"), d(0))],  # half-up ties
        [L(d(1), d("1E+3"), d("19.000")), L(d("1.000"), d("0"), d("0"))],
        [L(d(1), d("0.01"), d(19))] * 500,  # many lines: each rounded on its own
    ]
    for lines in cases:
        assert fast(lines, prices, currency) == plain(lines, prices, currency), lines


def test_no_line_is_an_unsigned_zero_and_a_bad_price_mode_is_refused() -> None:
    assert fast([], "gross", "KWD") == ("0.000", "0.000", "0.000")
    with pytest.raises(ValueError, match="prices"):
        lines_totals([L(Decimal(1), Decimal(1), Decimal(0))], "both", "EUR")
    with pytest.raises(ValueError, match="prices"):
        lines_totals([], "both", "EUR")
