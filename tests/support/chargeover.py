"""ChargeOver sandbox state -> our records.

``gross`` is always None: ChargeOver's ``total`` is comparable with the money rule only for
gross prices or tax-free records (see ``bulk.targets.chargeover``), which the state alone does
not tell; ``tests/test_chargeover.py`` checks the amounts with the records at hand.
"""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any

EXTRA_ARGS: list[str] = ["--option", "default_item=ADJUSTMENT"]
BATCHED = True  # creates go through _bulk: one request carries up to --concurrency records


def invoices(state: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"external_id": inv["external_key"], "id": str(inv["invoice_id"]), "currency": inv["currency_iso4217"],
         "gross": None, "titles": [line["descrip"].split("\n", 1)[0] for line in inv["line_items"]]}
        for inv in state["invoices"]
    ]


def refusable(record: dict[str, Any]) -> dict[str, Any]:
    # bulk accepts any item_ref; ChargeOver has no item with this external key (the lookup
    # answers 404), so the record fails naming the line.
    bad = copy.deepcopy(record)
    bad["lines"][0]["item_ref"] = "SKU-NOT-IN-CHARGEOVER"
    return bad


# --- the audit (tests/test_adversary.py) --------------------------------------------------------
# An item is (title, description, quantity, unit price, tax rate or None, item ref or None), the
# amounts as Decimal: what the sandbox stored, and what the record asks for by this target's
# mapping, computed from the raw input line (a dict), not from bulk's parser.

DEFAULT_ITEM = "ADJUSTMENT"  # EXTRA_ARGS: the item of lines without item_ref


def items(inv: dict[str, Any]) -> list[tuple[Any, ...]]:
    out = []
    for it in inv["line_items"]:
        title, _, description = it["descrip"].partition("\n")
        out.append((title, description or None, Decimal(str(it["line_quantity"])), Decimal(str(it["line_rate"])),
                    None, it["item_external_key"]))
    return out


def record_items(doc: dict[str, Any]) -> list[tuple[Any, ...]]:
    # No tax at ChargeOver (bulk.targets.chargeover_mapping): the rate is not sent.
    return [(ln["title"], ln.get("description") or None, Decimal(str(ln["quantity"])), Decimal(str(ln["unit_price"])),
             None, ln.get("item_ref") or DEFAULT_ITEM) for ln in doc["lines"]]


def record_status(doc: dict[str, Any]) -> str:
    # ChargeOver creates open invoices whatever the record's status (status is not mapped).
    return "open-unpaid"


def audited(state: dict[str, Any]) -> list[dict[str, Any]]:
    """Each invoice as the audit sees it: external_id, id, customer_id, status, items."""
    return [{"external_id": inv["external_key"], "id": str(inv["invoice_id"]), "customer_id": str(inv["customer_id"]),
             "status": inv["invoice_status_str"], "items": items(inv)} for inv in state["invoices"]]
