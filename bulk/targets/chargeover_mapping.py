"""What a record becomes at ChargeOver (contract: ``bulk.sandbox.chargeover``; API-NOTES.md §3).

Customer (``POST /api/v3/customer``): ``company`` = company, else name, else e-mail;
``external_key`` = the customer's external id; ``superuser_email``, ``superuser_name``; the
address as ``bill_addr1/2``, ``bill_city``, ``bill_state`` (region), ``bill_postcode``,
``bill_country`` (the ISO code as written: ChargeOver's examples use names, it is free text).

Invoice (``POST /api/v3/invoice``): ``customer_external_key``; ``external_key`` = the record's
external id; ``currency_id``; ``date`` = issue date (absent for an undated draft: ChargeOver
uses today); the address as ``bill_*``; ``memo`` = notes; ``line_items`` of ``item_id``,
``descrip`` (title, a newline, the description), ``line_rate`` = unit price and
``line_quantity``, both the record's Decimals, sent as exact JSON numbers. No tax field (see
``bulk.targets.chargeover``). ``extra`` keys that are documented invoice fields (``refnumber``,
``terms_id``, ``ship_*``, ``custom_1``...) are passed through, never over the mapping; others
are not sent (ChargeOver has no free-form metadata). Not mapped: ``due_date`` (no create field;
the terms decide it), ``status`` (ChargeOver creates open invoices; paying one needs a payment)
and the locale.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from ..records import Record

__all__ = ["API", "by_key", "comparable", "customer_body", "invoice_body"]

API = "/api/v3"
_PASS_THROUGH = frozenset({"refnumber", "class_id", "terms_id", "admin_id", "paycycle",
                           *(f"ship_{a}" for a in ("addr1", "addr2", "city", "state", "postcode", "country")),
                           *(f"custom_{n}" for n in range(1, 21))})


def comparable(record: Record) -> bool:
    """Is ChargeOver's total comparable with the money rule's gross (module docstring)?"""
    return record.prices == "gross" or all(not line.tax_rate for line in record.lines)


def _address(record: Record) -> dict[str, str]:
    a = record.customer.address
    if a is None:
        return {}
    fields = {"bill_addr1": a.line1, "bill_addr2": a.line2, "bill_city": a.city,
              "bill_state": a.region, "bill_postcode": a.postal_code, "bill_country": a.country}
    return {k: v for k, v in fields.items() if v is not None}


def customer_body(record: Record) -> dict[str, Any]:
    c = record.customer
    body: dict[str, Any] = {"company": c.company or c.name or c.email, "external_key": c.external_id,
                            "superuser_email": c.email, **_address(record)}
    if c.name:
        body["superuser_name"] = c.name
    return body


def invoice_body(record: Record, currency_id: str, item_ids: list[str]) -> dict[str, Any]:
    body: dict[str, Any] = {"customer_external_key": record.customer.external_id,
                            "external_key": record.external_id, "currency_id": int(currency_id),
                            **_address(record)}
    if record.issue_date is not None:
        body["date"] = record.issue_date.isoformat()
    if record.notes is not None:
        body["memo"] = record.notes
    body["line_items"] = [
        {"item_id": int(item_id),
         "descrip": line.title if line.description is None else f"{line.title}\n{line.description}",
         "line_rate": line.unit_price, "line_quantity": line.quantity}
        for line, item_id in zip(record.lines, item_ids, strict=True)
    ]
    for key, value in record.extra.items():
        if key in _PASS_THROUGH:
            body.setdefault(key, value)
    return body


def by_key(kind: str, key: str) -> str:
    """The URI of the ``kind`` object with this external key (O-ext), percent-encoded."""
    return f"{API}/{kind}/external_key:{quote(key, safe='')}"
