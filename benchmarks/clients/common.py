"""What every baseline client shares: the request body, the input lines, the result line
(the command line is :mod:`benchmarks.clients.options`).

The body is the one ``bulk.targets.agiled.invoice_body`` sends, built straight from the
parsed JSON (amounts as their source text) without ``bulk``'s validation.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from typing import Any

import orjson

INVOICES = "/public/v1/invoices"
CONTACTS = "/public/v1/contacts"


def lines(path: str) -> Iterator[bytes]:
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                yield line


def headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Accept": "application/json"}


def invoice_body(rec: dict[str, Any], contact_id: int) -> dict[str, Any]:
    body: dict[str, Any] = {
        "invoice_number": rec["external_id"],
        "contact_id": contact_id,
        "currency": rec["currency"],
        "issue_date": rec.get("issue_date"),
        "due_date": rec.get("due_date"),
        "status": rec.get("status") or "draft",
        "tax_inclusive": rec.get("prices") == "gross",
        "notes": rec.get("notes"),
        "items": [
            {
                "name": ln["title"],
                "description": ln.get("description"),
                "quantity": str(ln["quantity"]),
                "unit_price": str(ln["unit_price"]),
                "tax_rate": str(ln["tax_rate"]),
                "sku": ln.get("item_ref"),
            }
            for ln in rec["lines"]
        ],
    }
    for key, value in (rec.get("extra") or {}).items():
        body.setdefault(key, value)
    return body


def contact_body(rec: dict[str, Any]) -> dict[str, Any]:
    c = rec["customer"]
    first, _, last = (c.get("name") or "").partition(" ")
    a = c.get("address")
    return {
        "email": c["email"], "first_name": first or None, "last_name": last or None,
        "company": c.get("company"), "locale": c.get("locale") or "en", "external_id": c["external_id"],
        "address": None if a is None else {
            "line1": a.get("line1"), "line2": a.get("line2"), "city": a.get("city"), "state": a.get("region"),
            "postal_code": a.get("postal_code"), "country": a.get("country"),
        },
    }


def contact_request(rec: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    """The create-contact body and headers (used when the lookup finds none)."""
    key = f"contact-{rec['customer']['external_id']}"
    return orjson.dumps(contact_body(rec)), {"Content-Type": "application/json", "Idempotency-Key": key}


def request_parts(rec: dict[str, Any], contact_id: int) -> tuple[str, bytes, dict[str, str]]:
    """(external_id, encoded body, per-request headers) for one parsed line."""
    ext = rec["external_id"]
    body = orjson.dumps(invoice_body(rec, contact_id))
    return ext, body, {"Content-Type": "application/json", "Idempotency-Key": f"invoice-{ext}"}


def retry_after(value: str | None) -> float:
    try:
        return max(0.01, float(value)) if value else 1.0
    except ValueError:
        return 1.0


class Result:
    """Counts of one client run, printed as one JSON line on stdout at the end."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.created = 0
        self.requests = 0
        self.throttled = 0
        self.failed = 0

    def emit(self) -> None:
        elapsed = time.perf_counter() - self.t0
        sys.stdout.write(orjson.dumps({
            "created": self.created, "requests": self.requests, "throttled": self.throttled,
            "failed": self.failed, "work_seconds": round(elapsed, 4),
        }).decode() + "\n")
