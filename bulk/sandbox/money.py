"""The sandbox's own money rule (deliberately not ``bulk.money``: the simulator must be able
to disagree with the client's arithmetic).

Amounts are ``Decimal`` only. Rounding is ROUND_HALF_UP (half away from zero) to the
currency's minor unit, per ISO 4217: 0 digits for the zero-decimal currencies, 3 for the
three-decimal ones, 2 otherwise. Intermediate products and quotients are computed with 60
significant digits; inputs validated to at most 12 integer and 10 fraction digits stay
exact through the products, so the only rounding is the one the rule names.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Context, Decimal

__all__ = ["format_money", "line_totals", "minor_unit", "round_money"]

# ISO 4217 currencies with a minor unit other than 2 (funds codes CLF/UYW have 4).
_ZERO_DECIMAL = frozenset({"BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF",
                           "UGX", "UYI", "VND", "VUV", "XAF", "XOF", "XPF"})
_THREE_DECIMAL = frozenset({"BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"})
_FOUR_DECIMAL = frozenset({"CLF", "UYW"})

_CTX = Context(prec=60, rounding=ROUND_HALF_UP)
_HUNDRED = Decimal(100)
_EXPONENTS: dict[str, Decimal] = {}  # currency -> Decimal("0.01") etc. (at most 26**3 keys)


def minor_unit(currency: str) -> int:
    """Digits after the point for ``currency`` (an upper-case ISO 4217 code)."""
    if currency in _ZERO_DECIMAL:
        return 0
    if currency in _THREE_DECIMAL:
        return 3
    return 4 if currency in _FOUR_DECIMAL else 2


def _exponent(currency: str) -> Decimal:
    exponent = _EXPONENTS.get(currency)
    if exponent is None:
        exponent = _EXPONENTS[currency] = Decimal(1).scaleb(-minor_unit(currency))
    return exponent


def round_money(value: Decimal, currency: str) -> Decimal:
    """``value`` rounded half up to the minor unit of ``currency``."""
    return value.quantize(_exponent(currency), context=_CTX)


def format_money(value: Decimal, currency: str) -> str:
    """``value`` as a decimal string with exactly the currency's minor digits (no ``-0.00``)."""
    rounded = value.quantize(_exponent(currency), context=_CTX)
    if rounded.is_zero():
        rounded = rounded.copy_abs()
    return f"{rounded:f}"


def line_totals(quantity: Decimal, unit_price: Decimal, tax_rate: Decimal, *,
                tax_inclusive: bool, currency: str) -> tuple[Decimal, Decimal, Decimal]:
    """``(net, tax, gross)`` of one line, each rounded to the minor unit.

    Net prices (``tax_inclusive`` false): net = round(q x price), tax = round(net x rate/100),
    gross = net + tax. Gross prices: gross = round(q x price),
    net = round(gross x 100 / (100 + rate)), tax = gross - net. ``tax_rate`` is a percent.
    """
    exponent = _exponent(currency)
    amount = _CTX.multiply(quantity, unit_price).quantize(exponent, context=_CTX)
    if tax_inclusive:
        net = _CTX.divide(_CTX.multiply(amount, _HUNDRED), _CTX.add(_HUNDRED, tax_rate))
        net = net.quantize(exponent, context=_CTX)
        return net, _CTX.subtract(amount, net), amount
    tax = _CTX.divide(_CTX.multiply(amount, tax_rate), _HUNDRED).quantize(exponent, context=_CTX)
    return amount, tax, _CTX.add(amount, tax)
