"""Coperniq sandbox state -> our records.

Our external id is the first line of the invoice's ``description`` and each line title the first
line of a line item's description (``bulk.targets.coperniq``). Coperniq keeps no currency and no
tax, so its ``amount`` is not the money rule's gross in general (a net-price record with tax, or
prices finer than the currency): ``gross`` is None here, and tests/test_coperniq.py checks the
amounts against the records themselves.
"""

from __future__ import annotations

import copy
from decimal import Decimal
from pathlib import Path
from typing import Any

RECORD_MAP = Path(__file__).resolve().parents[2] / "fixtures" / "coperniq" / "record_map.csv"
# settle: the sandbox's slow answers (slow_ms, 1.2 s in tests/test_faults.py) commit within 2 s
# of the client giving up; the default of 10 s would only make the fault tests slower.
EXTRA_ARGS: list[str] = ["--option", f"record_map={RECORD_MAP}", "--option", "settle=2"]


def _first_line(text: str | None) -> str | None:
    return None if text is None else text.split("\n", 1)[0]


def invoices(state: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"external_id": _first_line(inv["description"]), "id": str(inv["id"]), "currency": None,
         "gross": None, "amount": inv["amount"], "status": inv["status"], "record_id": inv["record"]["id"],
         "issue_date": inv.get("issueDate"), "due_date": inv.get("dueDate"),
         "titles": [_first_line(item["description"]) for item in inv["lineItems"]],
         "lines": inv["lineItems"]}
        for inv in state["invoices"]
    ]


def refusable(record: dict[str, Any]) -> dict[str, Any]:
    # bulk cannot know which ids exist; Coperniq answers 400 for a recordId with no record.
    bad = copy.deepcopy(record)
    bad["extra"] = {**(bad.get("extra") or {}), "recordId": 999_999}
    return bad


# --- the audit (tests/test_adversary.py) --------------------------------------------------------
# An item is (title, description, quantity, unit price, tax rate or None, item ref or None), the
# amounts as Decimal: what the sandbox stored, and what the record asks for by this target's
# mapping, computed from the raw input line (a dict), not from bulk's parser.

DEFAULT_ITEM = "DISCOUNT"  # the catalog item of lines without item_ref (default_catalog_item)


def items(inv: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [(it["description"], None, Decimal(str(it["quantity"])), Decimal(str(it["unitPrice"])), None,
             it["catalogItem"]["sku"]) for it in inv["lineItems"]]


def record_items(doc: dict[str, Any]) -> list[tuple[Any, ...]]:
    # One line item per catalog item (bulk.targets.coperniq_mapping): lines sharing an item are
    # merged, quantities summed, their texts joined by newlines; no tax at Coperniq.
    groups: dict[str, list[dict[str, Any]]] = {}
    for ln in doc["lines"]:
        groups.setdefault(ln.get("item_ref") or DEFAULT_ITEM, []).append(ln)
    out = []
    for sku, lines in groups.items():
        text = "\n".join(ln["title"] if not ln.get("description") else f"{ln['title']}\n{ln['description']}"
                         for ln in lines)
        out.append((text, None, sum(Decimal(str(ln["quantity"])) for ln in lines), Decimal(str(lines[0]["unit_price"])),
                    None, sku))
    return out


def record_status(doc: dict[str, Any]) -> str:
    return str(doc.get("status") or "draft").upper()


def audited(state: dict[str, Any]) -> list[dict[str, Any]]:
    """Each invoice as the audit sees it: external_id, id, customer_id (the record), status, items."""
    return [{"external_id": _first_line(inv["description"]), "id": str(inv["id"]),
             "customer_id": str(inv["record"]["id"]), "status": inv["status"], "items": items(inv)}
            for inv in state["invoices"]]
