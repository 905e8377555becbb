"""Agiled sandbox state -> our records."""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any

EXTRA_ARGS: list[str] = []


def invoices(state: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"external_id": inv["invoice_number"], "id": str(inv["id"]), "currency": inv["currency"],
         "gross": inv["total"], "titles": [item["name"] for item in inv["items"]]}
        for inv in state["invoices"]
    ]


def refusable(record: dict[str, Any]) -> dict[str, Any]:
    # bulk does not compare the dates; Agiled answers 422 for a due date before the issue date.
    bad = copy.deepcopy(record)
    bad["issue_date"], bad["due_date"] = "2026-05-10", "2026-05-01"
    return bad


# --- the audit (tests/test_adversary.py) --------------------------------------------------------
# An item is (title, description, quantity, unit price, tax rate or None, item ref or None), the
# amounts as Decimal: what the sandbox stored, and what the record asks for by this target's
# mapping, computed from the raw input line (a dict), not from bulk's parser.


def items(inv: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [(it["name"], it["description"], Decimal(str(it["quantity"])), Decimal(str(it["unit_price"])),
             Decimal(str(it["tax_rate"])), it["sku"]) for it in inv["items"]]


def record_items(doc: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [(ln["title"], ln.get("description") or None, Decimal(str(ln["quantity"])), Decimal(str(ln["unit_price"])),
             Decimal(str(ln["tax_rate"])), ln.get("item_ref")) for ln in doc["lines"]]


def record_status(doc: dict[str, Any]) -> str:
    return str(doc.get("status") or "draft")


def audited(state: dict[str, Any]) -> list[dict[str, Any]]:
    """Each invoice as the audit sees it: external_id, id, customer_id, status, items."""
    return [{"external_id": inv["invoice_number"], "id": str(inv["id"]), "customer_id": str(inv["contact_id"]),
             "status": inv["status"], "items": items(inv)} for inv in state["invoices"]]
