"""Coperniq sandbox state -> our records.

Our external id is the first line of the invoice's ``description`` and each line title the first
line of a line item's description (``bulk.targets.coperniq``). Coperniq keeps no currency and no
tax, so its ``amount`` is not the money rule's gross in general (a net-price record with tax, or
prices finer than the currency): ``gross`` is None here, and tests/test_coperniq.py checks the
amounts against the records themselves.
"""

from __future__ import annotations

import copy
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
