"""Agiled sandbox state -> our records."""

from __future__ import annotations

import copy
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
