"""Currency facts and the money rule. Money is `Decimal` end to end; no float ever touches it.

The money rule (every total `bulk` reports or compares is computed this way)::

    per line, round() = ROUND_HALF_UP (ties away from zero) to the currency's minor unit
    prices="net":   net = round(quantity * unit_price); tax = round(net * rate / 100); gross = net + tax
    prices="gross": gross = round(quantity * unit_price); net = round(gross * 100 / (100 + rate));
                    tax = gross - net
    an invoice's totals are the sums of its lines' totals.

All arithmetic runs in `_CTX` (50 significant digits), so nothing is rounded before the one
`quantize` per amount: with |amount| < 10^12 and at most 12 decimals (the limits
`bulk.records` enforces), every product has at most 48 digits and is exact.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import (
    MAX_EMAX,
    MIN_EMIN,
    ROUND_HALF_UP,
    Context,
    Decimal,
    DivisionByZero,
    InvalidOperation,
    Overflow,
    localcontext,
)
from typing import Any, NamedTuple

from ._frozen import constructor
from ._money_scaled import _refilled_sums, _sums

__all__ = [
    "CurrencyTotals",
    "Totals",
    "invoice_totals",
    "is_currency",
    "line_totals",
    "lines_totals",
    "minor_units",
    "quantize",
]

# ISO 4217 List One (active codes, as published by SIX; includes XCG and ZWG of 2024/2025),
# plus the recently withdrawn codes below. Codes whose minor unit is "N.A."
# (precious metals XAU/XAG/XPD/XPT, bond units XBA-XBD, XDR, XSU, XUA, XAD, test XTS, XXX)
# are left out on purpose: an invoice amount needs a minor unit to be rounded to.
_EXPONENT_0 = "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF"
_EXPONENT_3 = "BHD IQD JOD KWD LYD OMR TND"
_EXPONENT_4 = "CLF UYW"
_EXPONENT_2 = (
    "AED AFN ALL AMD AOA ARS AUD AWG AZN BAM BBD BDT BMD BND BOB BOV BRL BSD BTN BWP BYN BZD "
    "CAD CDF CHE CHF CHW CNY COP COU CRC CUP CVE CZK DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP "
    "GEL GHS GIP GMD GTQ GYD HKD HNL HTG HUF IDR ILS INR IRR JMD KES KGS KHR KPW KYD KZT LAK "
    "LBP LKR LRD LSL MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MXV MYR MZN NAD NGN NIO "
    "NOK NPR NZD PAB PEN PGK PHP PKR PLN QAR RON RSD RUB SAR SBD SCR SDG SEK SGD SHP SLE SOS "
    "SRD SSP STN SVC SYP SZL THB TJS TMT TOP TRY TTD TWD TZS UAH USD USN UYU UZS VED VES WST "
    "XCD XCG YER ZAR ZMW ZWG"
)
# Not the iso4217 package (checked against its 2026-01-01 table): its exponents agree with these
# for every code both have, but it lacks the withdrawn codes below (we would keep a table anyway),
# and importing it parses an XML file (0.17-0.6 s measured here) at every start, against a resumed
# run's first request within 2 s. The hot path is one dict lookup either way.
# Withdrawn codes still found in the invoices a backfill migrates (ISO 4217 List Three, with
# their last minor unit): a 2022 invoice in HRK or a 2025 one in BGN is valid history.
_HISTORIC_0 = "BYR"
_HISTORIC_2 = "ANG BGN CUC EEK HRK LTL LVL MRO SKK SLL STD VEF ZWL"
_MINOR_UNITS: dict[str, int] = {
    code: exponent
    for exponent, codes in (
        (0, _EXPONENT_0), (2, _EXPONENT_2), (3, _EXPONENT_3), (4, _EXPONENT_4), (0, _HISTORIC_0), (2, _HISTORIC_2)
    )
    for code in codes.split()
}
# One quantum per code, built once: quantize() is on the hot path (3 calls per invoice line).
_QUANTUM: dict[str, Decimal] = {code: Decimal(1).scaleb(-e) for code, e in _MINOR_UNITS.items()}

# 50 digits is far more than any product of validated amounts needs (see module docstring);
# unbounded exponents so a huge-but-valid value never overflows into Infinity silently.
_CTX = Context(
    prec=50,
    rounding=ROUND_HALF_UP,
    Emax=MAX_EMAX,
    Emin=MIN_EMIN,
    traps=[InvalidOperation, DivisionByZero, Overflow],
)
_HUNDRED = Decimal(100)
_MULTIPLY = _CTX.multiply  # bound once: a Context's attribute lookup is slow (its own getattr)
# quantize()'s unsigned zero per quantum ("0.00", never "-0.00"): where lines_totals' sums start.
_ZERO_BY_Q: dict[Decimal, Decimal] = {q: (q * 0).copy_abs() for q in _QUANTUM.values()}


def is_currency(code: str) -> bool:
    """True if ``code`` is an ISO 4217 code with a minor unit (active, or recently withdrawn)."""
    return code in _MINOR_UNITS


def minor_units(currency: str) -> int:
    """The ISO 4217 exponent of ``currency`` (0 JPY, 2 EUR, 3 KWD). KeyError if unknown."""
    return _MINOR_UNITS[currency]


def quantize(amount: Decimal, currency: str) -> Decimal:
    """``amount`` rounded half-up (ties away from zero) to the currency's minor unit.

    A result of zero is returned without sign ("0.00", never "-0.00"). KeyError if the
    currency is unknown.
    """
    result = amount.quantize(_QUANTUM[currency], context=_CTX)
    return result if result else result.copy_abs()


@dataclass(frozen=True, slots=True)
class Totals:
    """Net, tax and gross of a line or an invoice; ``gross == net + tax`` by construction."""

    net: Decimal
    tax: Decimal
    gross: Decimal

    @classmethod
    def zero(cls, currency: str) -> Totals:
        """Zero totals carrying the currency's exponent, so sums print as "0.00" / "0"."""
        z = _QUANTUM[currency] * 0
        return cls(z, z, z)

    def __add__(self, other: Totals) -> Totals:
        if not isinstance(other, Totals):
            return NotImplemented
        return _new_totals(
            _CTX.add(self.net, other.net),
            _CTX.add(self.tax, other.tax),
            _CTX.add(self.gross, other.gross),
        )


_new_totals = constructor(Totals)  # Totals(...) without the frozen __init__'s cost (bulk._frozen)


def line_totals(
    quantity: Decimal, unit_price: Decimal, tax_rate: Decimal, prices: str, currency: str
) -> Totals:
    """Totals of one invoice line by the money rule (module docstring).

    ``tax_rate`` is in percent (19 means 19 %). ``prices`` is "net" or "gross" and says
    whether ``unit_price`` includes tax. ValueError for any other ``prices``.
    """
    amount = quantize(_CTX.multiply(quantity, unit_price), currency)
    if prices == "net":
        tax = quantize(_CTX.divide(_CTX.multiply(amount, tax_rate), _HUNDRED), currency)
        return Totals(amount, tax, _CTX.add(amount, tax))
    if prices == "gross":
        # The quotient is rounded to 50 digits before quantize; with the validated limits its
        # denominator is < 10^16, so it is never within 10^-50 of a half-unit tie it isn't on.
        net = quantize(
            _CTX.divide(_CTX.multiply(amount, _HUNDRED), _CTX.add(_HUNDRED, tax_rate)), currency
        )
        return Totals(net, _CTX.subtract(amount, net), amount)
    raise ValueError(f"prices must be 'net' or 'gross', not {prices!r}")


class _Amounts(NamedTuple):
    quantity: Decimal
    unit_price: Decimal
    tax_rate: Decimal


def invoice_totals(lines: Iterable[tuple[Decimal, Decimal, Decimal]], prices: str, currency: str) -> Totals:
    """The sums of :func:`line_totals` over ``(quantity, unit_price, tax_rate)`` triples (:func:`lines_totals`)."""
    return lines_totals([_Amounts(*line) for line in lines], prices, currency)


def lines_totals(lines: Sequence[Any], prices: str, currency: str) -> Totals:
    """The sums of :func:`line_totals` over ``lines`` (each with ``quantity``, ``unit_price``, ``tax_rate``).

    Exactly ``sum(line_totals(...) for each line)`` from ``Totals.zero(currency)``, digit for
    digit. It runs once per record, on the hot path: computed on integers in minor units
    (`bulk._money_scaled`: 20.7k instructions a benchmark record against 33.5k), each sum made
    a Decimal once; whatever that path is unsure of (amounts outside the parser's limits) takes
    :func:`_decimal_lines_totals`.
    """
    exponent = _MINOR_UNITS[currency]
    try:
        sums = _sums(lines, prices, exponent)
    except KeyError:  # an amount met for the first time (or one outside the limits, or not a Decimal)
        sums = _refilled_sums(lines, prices, exponent)
    if sums is None:
        return _decimal_lines_totals(lines, prices, currency)
    # An int times the quantum, in _CTX (50 digits, more than any sum of valid lines has): exact,
    # with the quantized amounts' exponent; one call each (Decimal(n).scaleb costs twice as much).
    q = _QUANTUM[currency]
    return _new_totals(_MULTIPLY(sums[0], q), _MULTIPLY(sums[1], q), _MULTIPLY(sums[2], q))


def _decimal_lines_totals(lines: Sequence[Any], prices: str, currency: str) -> Totals:
    """:func:`lines_totals` in Decimal arithmetic: the reference the integer path is tested against,
    and its fallback. Every step is
    exact (see the module docstring), so the shortcuts change no digit: dividing by 100 is
    ``scaleb(-2)``, multiplying by 100 is ``scaleb(2)``, and the third sum is the sum of the
    other two (gross = net + tax, tax = gross - net hold line by line, so also for the sums).
    A line's rounded amounts are not made unsigned as :func:`quantize` makes them: the sums
    start from the unsigned zero, and adding a -0 to it (or to anything) leaves no sign on a
    zero sum (ROUND_HALF_UP: only ROUND_FLOOR gives -0 for 0 + -0).
    """
    q = _QUANTUM[currency]
    zero = _ZERO_BY_Q[q]
    # No memo of distinct lines (measured: with quantities that vary, nearly every line missed
    # it, and its key, hash and upkeep cost more than the five operations it would spare).
    # The operators and one-argument methods run in the current context, here a copy of _CTX:
    # the same arithmetic as _CTX's methods, without their argument parsing (measured: 32k
    # instructions for an invoice of ~3 lines against 37k).
    with localcontext(_CTX):
        first = second = zero
        if prices == "net":  # first: net, second: tax
            for line in lines:
                amount = (line.quantity * line.unit_price).quantize(q)
                first += amount
                second += (amount * line.tax_rate).scaleb(-2).quantize(q)
            return _new_totals(first, second, first + second)
        if prices == "gross":  # first: gross, second: net
            for line in lines:
                amount = (line.quantity * line.unit_price).quantize(q)
                first += amount
                second += (amount.scaleb(2) / (_HUNDRED + line.tax_rate)).quantize(q)
            return _new_totals(second, first - second, first)
    raise ValueError(f"prices must be 'net' or 'gross', not {prices!r}")


class CurrencyTotals:
    """Per-currency sums of created invoices: how many, and their net, tax and gross.

    Mutable; one per worker or run, combined with `merge`. `to_json`/`from_json` round-trip
    exactly (amounts travel as decimal strings, never numbers).
    """

    __slots__ = ("_by_code",)

    def __init__(self) -> None:
        self._by_code: dict[str, tuple[int, Totals]] = {}

    def add(self, currency: str, totals: Totals) -> None:
        """Count one invoice in ``currency`` with these totals."""
        count, acc = self._by_code.get(currency) or (0, Totals.zero(currency))
        self._by_code[currency] = (count + 1, acc + totals)

    def merge(self, other: CurrencyTotals) -> None:
        """Add every count and amount of ``other`` into this one (``other`` is unchanged)."""
        for code, (count, totals) in other._by_code.items():
            mine, acc = self._by_code.get(code) or (0, Totals.zero(code))
            self._by_code[code] = (mine + count, acc + totals)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CurrencyTotals):
            return NotImplemented
        return self._by_code == other._by_code

    def __repr__(self) -> str:
        return f"CurrencyTotals({self.to_json()!r})"

    def to_json(self) -> dict[str, dict[str, int | str]]:
        """``{"EUR": {"invoices": 3, "net": "10.00", "tax": "1.90", "gross": "11.90"}}``.

        Sorted by currency code; amounts are strings with exactly the minor unit's decimals.
        """
        out: dict[str, dict[str, int | str]] = {}
        for code in sorted(self._by_code):
            count, t = self._by_code[code]
            out[code] = {
                "invoices": count,
                "net": format(quantize(t.net, code), "f"),
                "tax": format(quantize(t.tax, code), "f"),
                "gross": format(quantize(t.gross, code), "f"),
            }
        return out

    @classmethod
    def from_json(cls, data: dict[str, dict[str, int | str]]) -> CurrencyTotals:
        """Inverse of `to_json`. ValueError if ``data`` is not in that shape."""
        self = cls()
        try:
            for code, entry in data.items():
                count = entry["invoices"]
                if not is_currency(code) or type(count) is not int or count < 0:
                    raise ValueError(f"bad currency totals entry for {code!r}")
                texts = [entry[key] for key in ("net", "tax", "gross")]
                if not all(type(text) is str for text in texts):
                    raise ValueError(f"amounts for {code!r} must be decimal strings")
                amounts = [Decimal(text) for text in texts]
                if not all(a.is_finite() for a in amounts):
                    raise ValueError(f"non-finite amount for {code!r}")
                self._by_code[code] = (count, Totals(*amounts))
        except (KeyError, TypeError, AttributeError, InvalidOperation) as exc:
            raise ValueError(f"malformed currency totals: {exc!r}") from exc
        return self
