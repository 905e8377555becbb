"""An invoice's totals as integers of minor units: the worker's money path.

The money rule is `bulk.money`'s; this hands its results on as exact integers counted in the
currency's minor unit (cents, yen, fils) instead of Decimals, for the one place that only turns
them into text and sums (the recorder: an ID map row and the tally, once per invoice): the
tally sums integers (:meth:`bulk.tally.Tally.add_minor`) where it kept a Totals an invoice and
added its Decimals later (callgrind, the recorder's money per invoice: ~30,800 instructions
before, ~25,900 after).

Contract: ``lines_minor(lines, prices, currency)`` is ``(net, tax, gross)`` with
``lines_totals(lines, prices, currency).net == Decimal(net).scaleb(-minor_units(currency))``
(likewise tax and gross: the same digits and exponent). Errors are ``lines_totals``'
(ValueError, KeyError, InvalidOperation).
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from ._money_scaled import _refilled_sums, _sums
from .money import _CTX, _MINOR_UNITS, _decimal_lines_totals

__all__ = ["lines_minor"]


def lines_minor(lines: Sequence[Any], prices: str, currency: str) -> tuple[int, int, int]:
    """(net, tax, gross) of ``lines`` in minor units of ``currency`` (module docstring)."""
    exponent = _MINOR_UNITS[currency]
    try:
        sums = _sums(lines, prices, exponent)
    except KeyError:  # an amount met for the first time (or outside the limits, or not a Decimal)
        sums = _refilled_sums(lines, prices, exponent)
    if sums is not None:
        return sums
    # What the integer path is unsure of: the Decimal reference, whose sums are quantized to the
    # minor unit (exponent -exponent, at most 50 digits: quantize in _CTX refuses more), so
    # scaling each by 10^exponent is an exact integer.
    totals = _decimal_lines_totals(lines, prices, currency)
    return _whole(totals.net, exponent), _whole(totals.tax, exponent), _whole(totals.gross, exponent)


def _whole(amount: Decimal, exponent: int) -> int:
    scaled = amount.scaleb(exponent, context=_CTX)
    whole = int(scaled)
    if whole != scaled:  # not expected (see lines_minor): refuse rather than drop a digit
        raise ValueError(f"{amount} is not a whole number of minor units")
    return whole
