"""anny request bodies -> the fields the sandbox stores: one reader per create (customer,
address, invoice, item) and the invoice update, each validated with every problem listed
(a 422 of :class:`ApiError`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bulk.sandbox._anny_checks import Errors
from bulk.sandbox._anny_jsonapi import ApiError, document

__all__ = [
    "ADDRESS_KEYS",
    "CUSTOMER_KEYS",
    "INVOICE_KEYS",
    "INVOICE_UPDATE_KEYS",
    "ITEM_KEYS",
    "address_fields",
    "customer_fields",
    "invoice_fields",
    "invoice_update_fields",
    "item_fields",
]


CUSTOMER_KEYS = frozenset({"given_name", "family_name", "email", "company", "locale", "mobile"})
ADDRESS_KEYS = frozenset({"name", "street_address", "address_line_2", "zip_code", "city", "area",
                          "country_code"})
INVOICE_KEYS = frozenset({"currency", "recipient", "invoicing_party", "calculate_from_net",
                          "issued_at", "due_date", "notes", "vat_number", "is_quote", "number"})
ITEM_KEYS = frozenset({"title", "subtitle", "quantity", "tax_rate", "single_net_amount",
                       "single_gross_amount"})


def customer_fields(body: Any) -> dict[str, Any]:
    attrs, rels = document(body, "customers")
    e = Errors()
    e.check_known(attrs, CUSTOMER_KEYS)
    e.check_known(rels, frozenset(), "relationships")
    fields = {"email": e.email(attrs), "locale": e.locale(attrs),
              **{k: e.text(attrs, k) for k in ("given_name", "family_name", "company", "mobile")}}
    e.raise_any()
    return fields


def address_fields(body: Any, customer_exists: Callable[[str], bool]) -> dict[str, Any]:
    attrs, rels = document(body, "addresses")
    e = Errors()
    e.check_known(attrs, ADDRESS_KEYS)
    e.check_known(rels, frozenset({"addressable"}), "relationships")
    fields: dict[str, Any] = {k: e.text(attrs, k) for k in sorted(ADDRESS_KEYS - {"country_code"})}
    fields["country_code"] = e.country(attrs)
    fields["customer_id"] = e.related(rels, "addressable", "customers", required=True,
                                      exists=customer_exists)
    e.raise_any()
    return fields


def invoice_fields(body: Any, customer_exists: Callable[[str], bool],
                   number_taken: Callable[[str], bool]) -> dict[str, Any]:
    attrs, rels = document(body, "invoices")
    e = Errors()
    e.check_known(attrs, INVOICE_KEYS)
    e.check_known(rels, frozenset({"customer"}), "relationships")
    fields: dict[str, Any] = {
        "number": e.text(attrs, "number"), "currency": e.currency(attrs),
        "calculate_from_net": e.boolean(attrs, "calculate_from_net"),
        "is_quote": e.boolean(attrs, "is_quote"),
        "issued_at": e.day(attrs, "issued_at"), "due_date": e.day(attrs, "due_date"),
        **{k: e.text(attrs, k, max_len=65_535)
           for k in ("recipient", "invoicing_party", "notes", "vat_number")},
        "customer_id": e.related(rels, "customer", "customers", required=False,
                                 exists=customer_exists),
    }
    if fields["number"] is not None and number_taken(fields["number"]):
        e.add("/data/attributes/number", "The number has already been taken.")
    e.raise_any()
    return fields


#: what ``PATCH /invoices/{id}`` may change (our assumption: anny documents the PATCH, not its
#: fields); the currency, price mode and number are fixed at creation
INVOICE_UPDATE_KEYS = frozenset({"recipient", "invoicing_party", "issued_at", "due_date", "notes", "vat_number"})


def invoice_update_fields(body: Any, invoice_id: str) -> dict[str, Any]:
    """The attributes a JSON:API update document ``{"data": {"type": "invoices", "id",
    "attributes"}}`` sets (only those given)."""
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, dict):
        raise ApiError.one(400, "The request body must be a JSON:API document with a data object.",
                           pointer="/data")
    if data.get("type") != "invoices":
        raise ApiError.one(409, "The resource type must be invoices.", pointer="/data/type")
    if data.get("id") != invoice_id:
        raise ApiError.one(409, "The resource id must be the invoice's id.", pointer="/data/id")
    attrs, rels = data.get("attributes", {}), data.get("relationships", {})
    if not isinstance(attrs, dict) or not isinstance(rels, dict):
        raise ApiError.one(400, "attributes and relationships must be objects.", pointer="/data")
    e = Errors()
    e.check_known(attrs, INVOICE_UPDATE_KEYS)
    e.check_known(rels, frozenset(), "relationships")
    fields = {k: (e.day(attrs, k) if k in ("issued_at", "due_date") else e.text(attrs, k, max_len=65_535))
              for k in sorted(attrs.keys() & INVOICE_UPDATE_KEYS)}
    e.raise_any()
    return fields


def item_fields(body: Any, from_net: bool, invoice_of: Callable[[str], dict[str, Any] | None]
                ) -> dict[str, Any]:
    """The item's fields plus ``invoice`` (the stored draft it goes on)."""
    attrs, rels = document(body, "items")
    e = Errors()
    e.check_known(attrs, ITEM_KEYS)
    e.check_known(rels, frozenset({"document"}), "relationships")
    given, other = (("single_net_amount", "single_gross_amount") if from_net
                    else ("single_gross_amount", "single_net_amount"))
    fields: dict[str, Any] = {
        "title": e.text(attrs, "title", required=True, max_len=185),
        "subtitle": e.text(attrs, "subtitle", max_len=185),
        "quantity": e.integer(attrs, "quantity"),
        "tax_rate": e.amount(attrs, "tax_rate", required=True, non_negative=True),
        "single": e.amount(attrs, given, required=True),
    }
    if attrs.get(other) is not None:
        e.add(f"/data/attributes/{other}",
              f"Send {given} only: calculate_from_net is {str(from_net).lower()}.")
    invoice_id = e.related(rels, "document", "invoices", required=True,
                           exists=lambda i: invoice_of(i) is not None)
    invoice = invoice_of(invoice_id) if invoice_id is not None else None
    if invoice is not None:
        if invoice["status"] != "draft":
            e.add("/data/relationships/document", "Items can only be added to a draft invoice.")
        if invoice["calculate_from_net"] != from_net:
            e.param("calculate_from_net", "calculate_from_net must match the invoice's "
                    f"({str(invoice['calculate_from_net']).lower()}).")
    e.raise_any()
    fields["invoice"] = invoice
    return fields
