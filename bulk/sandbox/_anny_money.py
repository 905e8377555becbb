"""anny's money: the rule of one item (anny documents none; this one is the sandbox's own),
and amounts written as exact JSON numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Context, Decimal

import orjson

from bulk.sandbox.money import minor_unit
from bulk.sandbox.wire import plain

__all__ = ["ROUNDINGS", "ItemTotals", "exact", "item_totals", "money"]

ROUNDINGS = {"half_up": ROUND_HALF_UP, "half_even": ROUND_HALF_EVEN}
_CTX = Context(prec=60, rounding=ROUND_HALF_UP)
_HUNDRED = Decimal(100)


def money(value: Decimal, currency: str) -> orjson.Fragment:
    """An amount as a JSON number with exactly the currency's minor digits (``119.00``)."""
    text = f"{value.quantize(Decimal(1).scaleb(-minor_unit(currency)), context=_CTX):f}"
    return orjson.Fragment(text[1:] if text.startswith("-") and not value else text)


def exact(value: Decimal) -> orjson.Fragment:
    """A Decimal as a JSON number, digit for digit as it was sent."""
    return orjson.Fragment(plain(value))


@dataclass(frozen=True, slots=True)
class ItemTotals:
    net: Decimal
    tax: Decimal
    gross: Decimal
    derived_single: Decimal  # the single amount of the other direction


def item_totals(quantity: int, single: Decimal, rate: Decimal, *, from_net: bool, currency: str,
                rounding: str = ROUND_HALF_UP) -> ItemTotals:
    """One item by the money rule (anny does not document its rounding; this is ours):
    from net: net = r(q x single_net), tax = r(net x rate / 100), gross = net + tax;
    from gross: gross = r(q x single_gross), net = r(gross x 100 / (100 + rate)), tax = gross - net;
    r() rounds to the currency's minor unit, half up. The derived single amount (the other
    direction's unit price) is rounded the same way and is informational only."""
    unit = Decimal(1).scaleb(-minor_unit(currency))
    ctx = Context(prec=60, rounding=rounding)

    def r(value: Decimal) -> Decimal:
        return value.quantize(unit, context=ctx)

    amount = r(ctx.multiply(Decimal(quantity), single))
    factor = ctx.add(_HUNDRED, rate)
    if from_net:
        tax = r(ctx.divide(ctx.multiply(amount, rate), _HUNDRED))
        return ItemTotals(amount, tax, ctx.add(amount, tax), r(ctx.divide(ctx.multiply(single, factor), _HUNDRED)))
    net = r(ctx.divide(ctx.multiply(amount, _HUNDRED), factor))
    return ItemTotals(net, ctx.subtract(amount, net), amount, r(ctx.divide(ctx.multiply(single, _HUNDRED), factor)))
