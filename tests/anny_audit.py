"""The exactly-once audit of an anny run, at the server and in the run's failed_reasons.csv.

Shared by the anny tests that hold a request at the hostile proxy and let it land late
(tests/test_anny_settle_window.py, tests/test_anny_lost_answer.py). It reads the sandbox's
state (``SandboxServer.state()``: anny's customers and invoices with their items) and the
input's records; it imports nothing from bulk.
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path
from typing import Any


def exactly_once_problems(state: dict[str, Any], out: Path, records: list[dict[str, Any]]) -> list[str]:
    """What differs from exactly once: customers per e-mail, invoices per number, items per
    invoice (as a multiset of titles), failed records. Empty when the run was exactly once."""
    problems = [f"customer {e}: {n} customers at the API"
                for e, n in Counter(str(c["email"]).lower() for c in state["customers"]).items() if n > 1]
    for rec in records:
        found = [inv for inv in state["invoices"] if inv["number"] == rec["external_id"]]
        if len(found) != 1:
            problems.append(f"{rec['external_id']}: {len(found)} invoices at the API")
        for inv in found:
            titles = Counter(item["title"] for item in inv["items"])
            if titles != Counter(line["title"] for line in rec["lines"]):
                problems.append(f"{rec['external_id']}: items {dict(titles)}")
    with open(out / "failed_reasons.csv", newline="", encoding="utf-8") as f:
        problems += [f"{r['external_id']} failed at {r['stage']}: {r['message'][:200]}" for r in csv.DictReader(f)]
    return problems
