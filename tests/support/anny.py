"""anny sandbox state -> our records."""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any

EXTRA_ARGS: list[str] = []  # the organization comes with the credentials (ANNY_ORGANIZATION)


def invoices(state: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"external_id": inv["number"], "id": str(inv["id"]), "currency": inv["currency"],
         "gross": inv["total"], "titles": [item["title"] for item in inv["items"]]}
        for inv in state["invoices"]
    ]


def refusable(record: dict[str, Any]) -> dict[str, Any]:
    # bulk's e-mail check is deliberately loose; anny (RFC 5322) refuses a doubled dot in the
    # local part, so the customer create answers 422 and no invoice is made.
    bad = copy.deepcopy(record)
    bad["customer"]["external_id"] = "CUST-REFUSED"
    bad["customer"]["email"] = "jane..doe@example.com"
    return bad


# --- the audit (tests/test_adversary.py) --------------------------------------------------------
# An item is (title, description, quantity, unit price, tax rate or None, item ref or None), the
# amounts as Decimal: what the sandbox stored, and what the record asks for by this target's
# mapping, computed from the raw input line (a dict), not from bulk's parser.


def items(inv: dict[str, Any]) -> list[tuple[Any, ...]]:
    price = "single_net_amount" if inv["calculate_from_net"] else "single_gross_amount"
    return [(it["title"], it["subtitle"] or None, Decimal(str(it["quantity"])), Decimal(str(it[price])),
             Decimal(str(it["tax_rate"])), None) for it in inv["items"]]


def record_items(doc: dict[str, Any]) -> list[tuple[Any, ...]]:
    # anny items have no item reference; the price is net or gross as the record's prices say.
    return [(ln["title"], ln.get("description") or None, Decimal(str(ln["quantity"])), Decimal(str(ln["unit_price"])),
             Decimal(str(ln["tax_rate"])), None) for ln in doc["lines"]]


def record_status(doc: dict[str, Any]) -> str:
    return str(doc.get("status") or "draft")


def audited(state: dict[str, Any]) -> list[dict[str, Any]]:
    """Each invoice as the audit sees it: external_id, id, customer_id, status, items."""
    return [{"external_id": inv["number"], "id": str(inv["id"]), "customer_id": str(inv["customer_id"]),
             "status": inv["status"], "items": items(inv)} for inv in state["invoices"]]
