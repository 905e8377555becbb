"""The integer path of lines_totals (bulk._money_scaled) against the Decimal path, digit for digit.

`bulk.money._decimal_lines_totals` is the reference. Compared as strings (exponent and sign of
a zero count) over many thousands of random records at every currency exponent the code knows
(0 JPY, 2 EUR, 3 KWD, 4 CLF), both price modes, discounts, tax rates with many digits, half-way
cases, the largest amounts; and amounts outside the parser's limits, which must take the
Decimal path (the same result, or the same error).
"""

from __future__ import annotations

import random
from decimal import Decimal, InvalidOperation
from typing import NamedTuple

import pytest

from bulk import _money_scaled
from bulk.money import _decimal_lines_totals, lines_totals


class L(NamedTuple):
    quantity: Decimal
    unit_price: Decimal
    tax_rate: Decimal


def both(lines: list[L], prices: str, currency: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    fast = lines_totals(lines, prices, currency)
    ref = _decimal_lines_totals(lines, prices, currency)
    return (str(fast.net), str(fast.tax), str(fast.gross)), (str(ref.net), str(ref.tax), str(ref.gross))


def _amount(rng: random.Random, *, high: int = 12) -> Decimal:
    places = rng.choice((0, 0, 1, 2, 2, 3, 4, 5, 6, 9, 12))
    digits = rng.randint(1, high + places)
    value = Decimal(rng.randint(0, 10**digits - 1)).scaleb(-places)
    while value.adjusted() >= 12:
        value = value.scaleb(-1)
    if rng.random() < 0.1:  # trailing zeros: "2.500" is the value of "2.5"
        value = value.quantize(Decimal(1).scaleb(-min(12, places + 2)))
    return value


def _tie(rng: random.Random, exponent: int) -> Decimal:
    """A unit price whose product with 1 lies exactly half-way between two minor units."""
    return (Decimal(rng.randint(-10**6, 10**6)) + Decimal("0.5")).scaleb(-exponent)


@pytest.mark.parametrize("currency", ["JPY", "EUR", "KWD", "CLF"])
@pytest.mark.parametrize("prices", ["net", "gross"])
def test_random_records_agree_with_the_decimal_path(currency: str, prices: str) -> None:
    exponent = {"JPY": 0, "EUR": 2, "KWD": 3, "CLF": 4}[currency]
    rng = random.Random(f"scaled-{currency}-{prices}")
    for _ in range(1500):
        lines = []
        for _ in range(rng.choice((1, 1, 2, 3, 5, 12))):
            quantity = _amount(rng, high=rng.choice((2, 6, 12))) or Decimal(1)
            kind = rng.random()
            if kind < 0.15:
                price = _tie(rng, exponent)
            else:
                price = _amount(rng, high=rng.choice((3, 6, 12)))
                price = -price if kind < 0.35 else price  # discounts
            rate = rng.choice((Decimal(0), Decimal(7), Decimal(19), Decimal("7.7"), Decimal(1000),
                               Decimal("999.999999999999"), min(_amount(rng, high=3), Decimal(1000))))
            lines.append(L(quantity, price, rate))
        fast, ref = both(lines, prices, currency)
        assert fast == ref, (lines, prices, currency)


@pytest.mark.parametrize("currency", ["JPY", "EUR", "KWD", "CLF"])
@pytest.mark.parametrize("prices", ["net", "gross"])
def test_edge_cases_agree(currency: str, prices: str) -> None:
    d = Decimal
    big, tiny = d("999999999999.999999999999"), d("0.000000000001")
    cases = [
        [L(d(1), d("-0.0001"), d(19))],  # rounds to -0
        [L(d(1), d("12.345"), d(19)), L(d(1), d("-12.345"), d(19))],  # cancels
        [L(d(1), d("0.5"), d(0)), L(d(1), d("-0.5"), d(0)), L(d(1), d("0.005"), d(0)), L(d(1), d("-0.0005"), d(0))],
        [L(d("999999999999"), big, d(1000))],  # the largest product
        [L(d("999999999999"), -big, d("999.999999999999"))],
        [L(tiny, tiny, d(0)), L(tiny, -tiny, d("0.000000000001"))],
        [L(d(1), d("1E+3"), d("19.000")), L(d("1.000"), d("0"), d("0"))],
        [L(d(3), d("0.335"), d("16.666666666667"))],
        [L(d(1), d("0.01"), d(19))] * 500,
    ]
    for lines in cases:
        fast, ref = both(lines, prices, currency)
        assert fast == ref, lines


def test_the_integer_path_is_taken_for_valid_lines_and_refuses_what_it_cannot_be_sure_of() -> None:
    valid = [L(Decimal(2), Decimal("19.99"), Decimal(19))]
    assert _money_scaled.scaled_totals(valid, "net", 2) == (3998, 760, 4758)
    assert _money_scaled.scaled_totals(valid, "gross", 2) == (3360, 638, 3998)
    for bad in (Decimal("1E+12"), Decimal("0.0000000000001"), Decimal("NaN"), Decimal("Infinity")):
        assert _money_scaled.scaled_totals([L(Decimal(1), bad, Decimal(0))], "net", 2) is None
    assert _money_scaled.scaled_totals([L(Decimal(1), Decimal(1), Decimal(-1))], "net", 2) is None
    assert _money_scaled.scaled_totals([L(Decimal(1), Decimal(1), Decimal(1001))], "gross", 2) is None
    assert _money_scaled.scaled_totals(valid, "other", 2) is None


def test_outside_the_limits_the_decimal_path_decides() -> None:
    d = Decimal
    # more than 12 decimals: the Decimal path's digits, whatever the integer path would say
    lines = [L(d(1), d("0.0000000000005"), d(0)), L(d(3), d("0.005"), d(0))]
    fast, ref = both(lines, "net", "EUR")
    assert fast == ref
    for odd in (d("NaN"), d("1E+20"), d("-1E+15")):
        fast, ref = both([L(d(1), odd, d(0))], "net", "EUR")
        assert fast == ref, odd
    with pytest.raises(InvalidOperation):  # as many digits as the Decimal path cannot quantize
        lines_totals([L(d(1), d("1E+60"), d(0))], "net", "EUR")
    with pytest.raises(ValueError, match="prices must be"):
        lines_totals([L(d(1), d(1), d(0))], "other", "EUR")
    with pytest.raises(KeyError):
        lines_totals([L(d(1), d(1), d(0))], "net", "XXX")


def test_long_amounts_are_scaled_from_their_digits_not_in_the_context() -> None:
    """More digits than the context's 28: the integer path must not round them first (0.4999...
    became 0.5, one decimal, and a JPY total of 1 where the Decimal path gives 0), and a valid
    amount with very many trailing zeros must not raise Overflow."""
    d = Decimal
    long = d("0." + "4" * 3 + "9" * 28)  # 31 decimals
    assert _money_scaled._scaled(long) is None
    fast, ref = both([L(d(1), long, d(0))], "net", "JPY")
    assert fast == ref == ("0", "0", "0")
    zeros = d("1." + "0" * 5000)
    assert _money_scaled._scaled(zeros) == (1, 0)
    fast, ref = both([L(zeros, d("2.50"), d(10))], "net", "EUR")
    assert fast == ref


def _outcome(fn: object, lines: list[L], prices: str) -> object:
    try:
        totals = fn(lines, prices, "EUR")  # type: ignore[operator]  # both paths, one signature
    except Exception as exc:  # the outcome compared: the same exception type, or the same digits
        return type(exc)
    return str(totals.net), str(totals.tax), str(totals.gross)


@pytest.mark.parametrize("prices", ["net", "gross"])
@pytest.mark.parametrize("field", [0, 1, 2])
@pytest.mark.parametrize("other", [0.5, 1, True])
def test_a_float_or_int_equal_to_a_cached_decimal_takes_the_decimal_path(prices: str, field: int,
                                                                           other: object) -> None:
    """Review point 2: the scaled caches are keyed by value, and 0.5 == Decimal("0.5") with the
    same hash, so a hand-built line's float hit a cached Decimal's entry and got totals where the
    reference raises. Primed with the Decimals first, then the same values as another type."""
    d = Decimal
    cached = [d("0.5"), d("0.5"), d("0.5")] if type(other) is float else [d(1), d(1), d(1)]
    lines_totals([L(*cached)], prices, "EUR")  # every amount of the line now in the caches
    amounts: list[object] = list(cached)
    amounts[field] = other
    lines = [L(*amounts)]  # type: ignore[arg-type]  # deliberately not Decimal
    assert _outcome(lines_totals, lines, prices) == _outcome(_decimal_lines_totals, lines, prices)
    every = [L(*[other] * 3)]  # type: ignore[arg-type]
    assert _outcome(lines_totals, every, prices) == _outcome(_decimal_lines_totals, every, prices)
