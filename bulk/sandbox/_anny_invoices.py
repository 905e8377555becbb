"""anny's invoice and item routes: list, get, create and update invoices, add and delete
items (totals recalculated after each), send and set paid; :data:`~bulk.sandbox._anny_org.Handler`
functions."""

from __future__ import annotations

import itertools
from decimal import Decimal
from typing import Any

from aiohttp import web

from bulk.sandbox._anny_bodies import invoice_fields, invoice_update_fields, item_fields
from bulk.sandbox._anny_jsonapi import ApiError
from bulk.sandbox._anny_money import item_totals
from bulk.sandbox._anny_org import Api, Org, now
from bulk.sandbox._anny_resources import includes, invoice_res, item_res, list_doc, page
from bulk.sandbox.core import Problem, SandboxProblem

__all__ = [
    "create_invoice",
    "create_item",
    "delete_item",
    "get_invoice",
    "list_invoices",
    "send",
    "set_paid",
    "update_invoice",
]

ZERO = Decimal(0)


def _flag(request: web.Request, name: str) -> bool:
    raw = request.query.get(name, "false").lower()
    if raw not in ("true", "false", "1", "0"):
        raise ApiError.one(400, f"{name} must be true or false.", parameter=name)
    return raw in ("true", "1")


def list_invoices(api: Api, request: web.Request, org: Org, body: Any) -> web.Response:
    found = list(org.invoices.values())
    number, status = request.query.get("filter[number]"), request.query.get("filter[status]")
    if number is not None:
        found = [org.invoices[org.numbers[number]]] if number in org.numbers else []
    if status is not None:
        found = [inv for inv in found if inv["status"] == status]
    include = includes(request, {"items"})
    rows, meta = page(request, found)
    included = [item_res(org.items[i]) for inv in rows if "items" in include
                for i in inv["item_ids"]]
    return api.respond(list_doc([invoice_res(inv) for inv in rows], meta, included, include))


def get_invoice(api: Api, request: web.Request, org: Org, body: Any) -> web.Response:
    invoice = _invoice(org, request)
    doc: dict[str, Any] = {"data": invoice_res(invoice)}
    if "items" in includes(request, {"items"}):
        doc["included"] = [item_res(org.items[i]) for i in invoice["item_ids"]]
    return api.respond(doc)


def create_invoice(api: Api, request: web.Request, org: Org, body: Any) -> web.Response:
    fields = invoice_fields(body, org.customers.__contains__, org.numbers.__contains__)
    if fields["number"] is None:
        fields["number"] = next(f"RE-{n:05d}" for n in itertools.count(len(org.numbers) + 1)
                                if f"RE-{n:05d}" not in org.numbers)
    invoice = {"id": api.new_id("invoices"), **fields, "status": "draft", "net_amount": ZERO,
               "tax_amount": ZERO, "total": ZERO, "buyer_data": None, "paid_notification": None,
               "created_at": now(), "item_ids": []}
    _recalculate(org, invoice)
    org.invoices[invoice["id"]] = invoice
    org.numbers[invoice["number"]] = invoice["id"]
    api.crash.committed(request, "invoice")
    return api.respond({"data": invoice_res(invoice)}, 201)


def create_item(api: Api, request: web.Request, org: Org, body: Any) -> web.Response:
    from_net = _flag(request, "calculate_from_net")
    fields = item_fields(body, from_net, org.invoices.get)
    invoice = fields.pop("invoice")
    single = fields.pop("single")
    currency = invoice["currency"]
    t = item_totals(fields["quantity"], single, fields["tax_rate"], from_net=from_net,
                    currency=currency, rounding=api.rounding)
    item = {"id": api.new_id("items"), **fields, "invoice_id": invoice["id"],
            "single_net_amount": single if from_net else t.derived_single,
            "single_gross_amount": t.derived_single if from_net else single,
            "net_amount": t.net, "tax_amount": t.tax, "gross_amount": t.gross,
            "currency": currency}
    org.items[item["id"]] = item
    invoice["item_ids"].append(item["id"])
    _recalculate(org, invoice)
    api.crash.committed(request, "item")
    return api.respond({"data": item_res(item)}, 201)


def update_invoice(api: Api, request: web.Request, org: Org, body: Any) -> web.Response:
    invoice = _invoice(org, request)
    fields = invoice_update_fields(body, invoice["id"])
    if invoice["status"] != "draft":
        raise ApiError.one(422, f"Only a draft invoice can be changed (this one is {invoice['status']}).")
    invoice.update(fields)
    org.invoices[invoice["id"]] = invoice
    api.crash.committed(request, "update")
    return api.respond({"data": invoice_res(invoice)})


def delete_item(api: Api, request: web.Request, org: Org, body: Any) -> web.Response:
    item = org.items.get(request.match_info["id"])
    if item is None:
        raise SandboxProblem(Problem.NOT_FOUND)
    invoice = org.invoices[item["invoice_id"]]
    if invoice["status"] != "draft":
        raise ApiError.one(422, f"Only a draft invoice's items can be deleted (this one is {invoice['status']}).")
    invoice["item_ids"] = [i for i in invoice["item_ids"] if i != item["id"]]
    del org.items[item["id"]]
    _recalculate(org, invoice)
    org.invoices[invoice["id"]] = invoice
    api.crash.committed(request, "delete-item")
    return web.Response(status=204)


def send(api: Api, request: web.Request, org: Org, body: Any) -> web.Response:
    invoice = _invoice(org, request)
    if invoice["status"] != "draft":
        raise ApiError.one(422, "Only a draft invoice can be sent.")
    if invoice["issued_at"] is None:
        raise ApiError.one(422, "The issued_at is required to send an invoice.",
                           pointer="/data/attributes/issued_at")
    if not invoice["item_ids"]:
        raise ApiError.one(422, "An invoice without items cannot be sent.")
    customer = org.customers.get(invoice["customer_id"] or "")
    if customer is not None:
        address = org.addresses.get(customer["address_id"] or "") or {}
        name = " ".join(p for p in (customer["given_name"], customer["family_name"]) if p)
        invoice["buyer_data"] = {"company_name": customer["company"], "contact_name": name or None,
                                 "address_line": address.get("street_address"),
                                 "postal_code": address.get("zip_code"),
                                 "city": address.get("city"),
                                 "country_code": address.get("country_code")}
        if not invoice["recipient"]:
            invoice["recipient"] = "\n".join(p for p in (customer["company"], name) if p) or None
    invoice["status"] = "sent"
    api.crash.committed(request, "send")
    return api.respond({"data": invoice_res(invoice)})


def set_paid(api: Api, request: web.Request, org: Org, body: Any) -> web.Response:
    invoice = _invoice(org, request)
    if request.method == "PUT":
        notify = body.get("send_notification", False) if isinstance(body, dict) else body
        if notify is None:
            notify = False
        if not isinstance(notify, bool):
            raise ApiError.one(422, "send_notification must be true or false.",
                               pointer="/send_notification")
    else:
        notify = _flag(request, "sendNotification")
    if invoice["status"] != "sent":
        raise ApiError.one(422, "invoice not in SENT status")
    invoice["status"], invoice["paid_notification"] = "paid", notify
    api.crash.committed(request, "set-paid")
    return api.respond({"data": invoice_res(invoice)})


def _invoice(org: Org, request: web.Request) -> dict[str, Any]:
    invoice = org.invoices.get(request.match_info["id"])
    if invoice is None:
        raise SandboxProblem(Problem.NOT_FOUND)
    return invoice


def _recalculate(org: Org, invoice: dict[str, Any]) -> None:
    """The invoice's totals and VAT breakdown: sums over its items (after every item)."""
    net = tax = gross = ZERO
    breakdown: dict[Decimal, tuple[int, Decimal, Decimal, Decimal]] = {}
    for item_id in invoice["item_ids"]:
        item = org.items[item_id]
        net, tax, gross = net + item["net_amount"], tax + item["tax_amount"], gross + item["gross_amount"]
        n, b_net, b_tax, b_gross = breakdown.get(item["tax_rate"], (0, ZERO, ZERO, ZERO))
        breakdown[item["tax_rate"]] = (n + 1, b_net + item["net_amount"], b_tax + item["tax_amount"],
                                       b_gross + item["gross_amount"])
    invoice.update(net_amount=net, tax_amount=tax, total=gross, breakdown=breakdown)
