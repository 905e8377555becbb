"""ChargeOver sandbox state -> our records.

``gross`` is always None: ChargeOver's ``total`` is comparable with the money rule only for
gross prices or tax-free records (see ``bulk.targets.chargeover``), which the state alone does
not tell; ``tests/test_chargeover.py`` checks the amounts with the records at hand.
"""

from __future__ import annotations

import copy
from typing import Any

EXTRA_ARGS: list[str] = ["--option", "default_item=ADJUSTMENT"]


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
