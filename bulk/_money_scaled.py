"""The money rule of `bulk.money` on integers scaled to the currency's minor unit: an invoice's totals.

Contract of `scaled_totals`: for lines whose amounts are within the limits `bulk.records`
enforces (finite, |amount| < 10^12, at most 12 decimals; tax rate 0..1000), the invoice's
net, tax and gross as integers counted in minor units (cents for EUR, yen for JPY, fils for
KWD), equal to the coefficients of `bulk.money`'s Decimal totals (whose exponent is always
minus the currency's exponent). For anything else (an amount outside the limits, a negative
tax rate, ``prices`` neither "net" nor "gross") it returns None, and the Decimal path, the
reference, computes (or refuses) the totals instead.

Why it is exact: every amount is ``n * 10^-e`` with integers n and e, so each step of the
money rule is a ratio of integers rounded half up (ties away from zero) to an integer, done
here with integer floor division and never a float. The Decimal path computes the same
values: its products are exact at 50 digits, and its one inexact step (the gross quotient,
rounded to 50 digits before it is quantized) is never close enough to a tie to round across
it (see `bulk.money`). tests/test_money_scaled.py compares the two digit for digit.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

__all__ = ["scaled_totals"]

_LIMIT = 10**12  # |amount| below this, as bulk.records enforces
_PLACES = 12  # decimals at most
_RATE_HIGH = 1000  # tax rates 0..1000 (percent)
_EXPONENTS = range(2 * _PLACES + 1)

# Rounding x / d half away from zero, for d > 0: ``(x + d // 2) // d`` for x >= 0 (d even, or 1
# with nothing to round), and the mirror image ``-((d // 2 - x) // d)`` for x < 0 (floor division
# alone would round toward minus infinity).
#
# A product of amounts n1 * 10^-e1 and n2 * 10^-e2 is n1 * n2 * 10^-(e1 + e2); in minor units of
# a currency of exponent m it is n1 * n2 * up / down, rounded: per m, indexed by e1 + e2, the
# (up, half of down, down) that say it: (10^(m - e), 0, 1) when e <= m (exact), else
# (1, 10^(e - m) / 2, 10^(e - m)). Made once for every m and e.
_PRODUCT: dict[int, tuple[tuple[int, int, int], ...]] = {
    m: tuple((10 ** (m - e), 0, 1) if e <= m else (1, 10 ** (e - m) >> 1, 10 ** (e - m)) for e in _EXPONENTS)
    for m in _EXPONENTS
}

# Amounts repeat from record to record (the parser's caches hand on the very same Decimal
# objects, whose hash is computed once), so each is scaled once. Keyed by the Decimal: equal
# ones ("1.0", "1") share an entry, as only the value matters to the rounding. Only a Decimal
# may use an entry: a float or int equal to a cached Decimal has its hash and compares equal,
# but the Decimal path, the reference, refuses a float, so `_sums` checks each amount's type
# before its lookup. Bounded like the parser's caches (emptied when full), and as large as
# theirs (bulk._record_fields._CACHE_SIZE): a smaller one, refilled while the parser's still
# held every amount, was emptied over and over (measured on the 20,000-invoice benchmark input,
# 2,584 distinct quantities and prices: 16% of the records missed it at 2,048). What each maps to:
_UNITS: dict[Decimal, tuple[int, int]] = {}  # a quantity or unit price -> (n, e): n * 10^-e
# a tax rate n * 10^-e -> tax = round(amount * n / 10^(e + 2)): (n, 10^(e + 2) / 2, 10^(e + 2))
_NET_RATES: dict[Decimal, tuple[int, int, int]] = {}
# a tax rate n * 10^-e -> net = round(gross * 100 / (100 + rate)) = round(gross * 2u / 2d) with
# u = 100 * 10^e, d = u + n: (2u, d, 2d)
_GROSS_RATES: dict[Decimal, tuple[int, int, int]] = {}
_KEPT = 4096


def _scaled(amount: Any) -> tuple[int, int] | None:
    """``(n, e)`` with ``amount == n * 10^-e``, e as small as it can be, for a Decimal within the
    limits; else None."""
    if type(amount) is not Decimal or not amount.is_finite() or not -_LIMIT < amount < _LIMIT:
        return None
    sign, digits, exponent = amount.as_tuple()
    assert isinstance(exponent, int)  # finite
    if exponent >= 0:
        return int(amount), 0  # exact: int() of a Decimal uses no context
    # From the digits, not amount.scaleb(): that rounds to the context's precision (28 digits),
    # so a long amount would pass as a short one, and a very long one would raise Overflow.
    e, k = -exponent, len(digits)
    while e and k and digits[k - 1] == 0:  # trailing zeros are not precision ("1.50" has 1 decimal)
        e, k = e - 1, k - 1
    if e > _PLACES:
        return None
    n = int("".join(map(str, digits[:k])) or "0")
    if n == 0:
        return 0, 0
    return (-n if sign else n), e


def _fill(lines: Sequence[Any], prices: str) -> bool:
    """Scale every amount of ``lines`` into the caches; False if one is outside the limits."""
    rates = _NET_RATES if prices == "net" else _GROSS_RATES
    for cache in (_UNITS, rates):
        if len(cache) + 2 * len(lines) > _KEPT:
            cache.clear()  # room for the whole record: its second pass finds every amount
    for line in lines:
        for amount in (line.quantity, line.unit_price):
            if amount not in _UNITS:  # only the amounts met for the first time
                if (scaled := _scaled(amount)) is None:
                    return False
                _UNITS[amount] = scaled
        if line.tax_rate in rates:
            continue
        rate = _scaled(line.tax_rate)
        if rate is None or not 0 <= rate[0] <= _RATE_HIGH * 10 ** rate[1]:
            return False
        n, e = rate
        if prices == "net":
            rates[line.tax_rate] = (n, 10 ** (e + 2) >> 1, 10 ** (e + 2))
        else:
            u = 100 * 10**e
            rates[line.tax_rate] = (2 * u, u + n, 2 * (u + n))
    return True


def _sums(lines: Sequence[Any], prices: str, exponent: int) -> tuple[int, int, int] | None:
    """`scaled_totals` for lines whose amounts are all in the caches (KeyError for one that is not).

    One loop for both price modes: a line's amount is rounded from quantity x unit price, and
    its second figure from amount x a rate's (multiplier, half, divisor), which the caches hold
    per mode: the tax ("net" prices) or the net ("gross" prices)."""
    if prices == "net":
        rates = _NET_RATES
    elif prices == "gross":
        rates = _GROSS_RATES
    else:
        return None
    units, product, decimal = _UNITS, _PRODUCT[exponent], Decimal
    first = second = 0  # net and tax ("net" prices), gross and net ("gross" prices)
    for line in lines:
        quantity, unit_price, tax_rate = line.quantity, line.unit_price, line.tax_rate
        if type(quantity) is not decimal or type(unit_price) is not decimal or type(tax_rate) is not decimal:
            raise KeyError(line)  # not an entry's: _fill refuses it, the Decimal path decides
        qn, qe = units[quantity]
        pn, pe = units[unit_price]
        up, half, down = product[qe + pe]
        x = qn * pn * up
        amount = (x + half) // down if x >= 0 else -((half - x) // down)
        first += amount
        up, half, down = rates[tax_rate]
        x = amount * up
        second += (x + half) // down if x >= 0 else -((half - x) // down)
    if prices == "net":
        return first, second, first + second
    return second, first - second, first


def scaled_totals(lines: Sequence[Any], prices: str, exponent: int) -> tuple[int, int, int] | None:
    """(net, tax, gross) of ``lines`` in minor units of a currency of ``exponent``; None when unsure
    (module docstring). Each line has ``quantity``, ``unit_price`` and ``tax_rate``."""
    try:
        return _sums(lines, prices, exponent)
    except KeyError:  # an amount not met yet
        return _refilled_sums(lines, prices, exponent)


def _refilled_sums(lines: Sequence[Any], prices: str, exponent: int) -> tuple[int, int, int] | None:
    """`scaled_totals` once `_sums` missed: the record's amounts scaled into the caches, then summed."""
    if not _fill(lines, prices):
        return None
    try:
        return _sums(lines, prices, exponent)
    except KeyError:  # not expected (_fill made room for all of them): the Decimal path decides
        return None
