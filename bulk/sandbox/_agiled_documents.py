"""What the Agiled sandbox answers with (the contract is in ``agiled.py``): an invoice
document with its line and invoice totals by the money rule, and list pages."""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

from aiohttp import web

from bulk.sandbox.agiled_rules import Errors
from bulk.sandbox.money import format_money, line_totals
from bulk.sandbox.wire import plain

__all__ = ["invoice_document", "list_page"]

ZERO = Decimal(0)


def invoice_document(invoice_id: int, fields: dict[str, Any], *, created_at: str,
                     first_item_id: int) -> dict[str, Any]:
    """The stored and answered invoice of validated ``fields`` (its ``items`` popped and
    replaced by the answered lines, numbered from ``first_item_id``): per line net, tax and
    gross, rounded half up to the currency's minor unit; the invoice sums the lines."""
    currency, inclusive = fields["currency"], fields["tax_inclusive"]
    items, net_sum, tax_sum, gross_sum = [], ZERO, ZERO, ZERO
    for item_id, line in enumerate(fields.pop("items"), start=first_item_id):
        quantity, price, rate = line["quantity"], line["unit_price"], line["tax_rate"]
        net, tax, gross = line_totals(quantity, price, rate, tax_inclusive=inclusive,
                                      currency=currency)
        net_sum, tax_sum, gross_sum = net_sum + net, tax_sum + tax, gross_sum + gross
        items.append({
            "id": item_id, "name": line["name"], "description": line["description"],
            "quantity": plain(quantity.normalize()), "unit_price": plain(price.normalize()),
            "tax_rate": plain(rate.normalize()), "sku": line["sku"],
            "net": format_money(net, currency), "tax": format_money(tax, currency),
            "gross": format_money(gross, currency),
        })
    return {
        "id": invoice_id, **fields, "items": items,
        "sub_total": format_money(net_sum, currency),
        "tax_total": format_money(tax_sum, currency),
        "total": format_money(gross_sum, currency),
        "created_at": created_at,
    }


def list_page(request: web.Request, found: list[dict[str, Any]], errors: Errors) -> dict[str, Any]:
    """The page of ``found`` the request asks for (``page`` >= 1, ``per_page`` 1..100,
    clamped); a parameter that is not an integer is noted in ``errors`` (the caller answers
    422 then, not the page)."""
    page = _query_int(request, "page", 1, errors)
    per_page = _query_int(request, "per_page", 25, errors)
    page, per_page = max(1, page), min(100, max(1, per_page))
    start = (page - 1) * per_page
    return {
        "data": found[start:start + per_page],
        "meta": {"current_page": page, "last_page": max(1, math.ceil(len(found) / per_page)),
                 "per_page": per_page, "total": len(found)},
    }


def _query_int(request: web.Request, name: str, default: int, errors: Errors) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        errors.add(name, f"The {name.replace('_', ' ')} must be an integer.")
        return default
