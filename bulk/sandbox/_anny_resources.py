"""anny's JSON:API answers: the resource objects of customers, addresses, invoices and items,
and list documents (``include``, page parameters and ``meta.page``)."""

from __future__ import annotations

import math
from typing import Any

from aiohttp import web

from bulk.sandbox._anny_jsonapi import ApiError
from bulk.sandbox._anny_money import exact, money

__all__ = ["address_res", "customer_res", "includes", "invoice_res", "item_res", "list_doc", "page", "ref"]


def ref(kind: str, ident: str | None) -> dict[str, Any]:
    """A to-one relationship: ``{"data": {"type", "id"}}`` or ``{"data": null}``."""
    return {"data": None if ident is None else {"type": kind, "id": ident}}


def list_doc(data: list[Any], meta: dict[str, Any], included: list[Any],
             include: set[str]) -> dict[str, Any]:
    """A list document; ``included`` only when the request named an ``include``."""
    doc: dict[str, Any] = {"data": data, "meta": meta}
    if include:
        doc["included"] = included
    return doc


def customer_res(c: dict[str, Any]) -> dict[str, Any]:
    names = " ".join(p for p in (c["given_name"], c["family_name"]) if p)
    attrs = {k: c[k] for k in ("email", "locale", "given_name", "family_name", "company",
                               "mobile", "created_at")}
    return {"type": "customers", "id": c["id"],
            "attributes": {**attrs, "full_name": names or c["company"] or c["email"]},
            "relationships": {"address": ref("addresses", c["address_id"])}}


def address_res(a: dict[str, Any]) -> dict[str, Any]:
    return {"type": "addresses", "id": a["id"],
            "attributes": {k: v for k, v in a.items() if k not in ("id", "customer_id")},
            "relationships": {"addressable": ref("customers", a["customer_id"])}}


def invoice_res(inv: dict[str, Any]) -> dict[str, Any]:
    cur = inv["currency"]
    skip = ("id", "customer_id", "item_ids", "net_amount", "tax_amount", "total", "breakdown",
            "paid_notification")
    attrs = {k: v for k, v in inv.items() if k not in skip}
    attrs.update(formatted_number=inv["number"], locked=inv["status"] != "draft",
                 net_amount=money(inv["net_amount"], cur),
                 tax_amount=money(inv["tax_amount"], cur), total=money(inv["total"], cur),
                 vat_breakdown=[{"tax_rate": exact(rate), "item_count": n,
                                 "net_amount": money(net, cur), "tax_amount": money(tax, cur),
                                 "gross_amount": money(gross, cur)}
                                for rate, (n, net, tax, gross) in inv["breakdown"].items()])
    return {"type": "invoices", "id": inv["id"], "attributes": attrs,
            "relationships": {"customer": ref("customers", inv["customer_id"]),
                              "items": {"data": [{"type": "items", "id": i}
                                                 for i in inv["item_ids"]]}}}


def item_res(it: dict[str, Any]) -> dict[str, Any]:
    cur = it["currency"]
    attrs = {k: it[k] for k in ("title", "subtitle", "quantity", "currency")}
    attrs.update(tax_rate=exact(it["tax_rate"]),
                 single_net_amount=exact(it["single_net_amount"]),
                 single_gross_amount=exact(it["single_gross_amount"]),
                 **{k: money(it[k], cur) for k in ("net_amount", "tax_amount", "gross_amount")})
    return {"type": "items", "id": it["id"], "attributes": attrs,
            "relationships": {"document": ref("invoices", it["invoice_id"])}}


def includes(request: web.Request, allowed: set[str]) -> set[str]:
    """The ``include`` paths asked for; one not in ``allowed`` -> 400."""
    raw = request.query.get("include", "")
    wanted = {part for part in raw.split(",") if part}
    if wanted - allowed:
        raise ApiError.one(400, f"Include path(s) not supported: {', '.join(sorted(wanted - allowed))}.",
                           parameter="include")
    return wanted


def page(request: web.Request, rows: list[Any]) -> tuple[list[Any], dict[str, Any]]:
    """The rows of the requested page (``page[number]`` >= 1, ``page[size]`` 1..30, clamped;
    not an integer -> 400) and the list's ``meta``."""
    values = []
    for name, default in (("page[number]", 1), ("page[size]", 30)):
        raw = request.query.get(name)
        try:
            values.append(default if raw is None else int(raw))
        except ValueError:
            raise ApiError.one(400, f"{name} must be an integer.", parameter=name) from None
    number, size = max(1, values[0]), min(30, max(1, values[1]))
    last = max(1, math.ceil(len(rows) / size))
    info = {"currentPage": number, "lastPage": last, "perPage": size, "total": len(rows)}
    return rows[(number - 1) * size: number * size], {"page": info}
