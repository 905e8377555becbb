"""anny sandbox state -> our records."""

from __future__ import annotations

import copy
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
