"""What a job has done so far: record outcomes, money totals and API total mismatches.

Cumulative across every resumed run of the job (it is saved in each checkpoint), so the
summary of a run directory describes everything done for its input.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from .money import CurrencyTotals

__all__ = ["Tally"]

_MAX_MISMATCHES = 100


@dataclass(slots=True)
class Tally:
    read: int = 0  # records finished, whatever the outcome
    created: int = 0  # invoices in the ID map (made now, or found already made)
    existing: int = 0  # of those, found at the API already (a lost answer, an earlier job)
    updated: int = 0  # in the ID map, not in `created`: an existing invoice changed to match (--on-existing update)
    unchanged: int = 0  # in the ID map, not in `created`: an existing invoice that already matched
    rejected: int = 0  # invalid input (incl. duplicate external ids)
    failed: int = 0  # refused by the API
    uncertain: int = 0  # retries exhausted with the outcome unknown: safe to feed back
    totals: CurrencyTotals = field(default_factory=CurrencyTotals)
    mismatch_count: int = 0
    mismatches: list[dict[str, str]] = field(default_factory=list)

    @property
    def mapped(self) -> int:
        """Rows of the ID map: created (incl. existing), updated and unchanged invoices."""
        return self.created + self.updated + self.unchanged

    def mismatch(self, external_id: str, currency: str, expected: Decimal, reported: Decimal) -> None:
        self.mismatch_count += 1
        if len(self.mismatches) < _MAX_MISMATCHES:
            self.mismatches.append(
                {"external_id": external_id, "currency": currency, "expected_gross": str(expected),
                 "reported_gross": str(reported)}
            )

    def to_json(self) -> dict[str, Any]:
        return {
            "read": self.read, "created": self.created, "existing": self.existing,
            "updated": self.updated, "unchanged": self.unchanged,
            "rejected": self.rejected, "failed": self.failed, "uncertain": self.uncertain,
            "totals": self.totals.to_json(),
            "mismatch_count": self.mismatch_count, "mismatches": list(self.mismatches),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Tally:
        def n(key: str) -> int:
            return int(data.get(key, 0))

        return cls(read=n("read"), created=n("created"), existing=n("existing"), updated=n("updated"),
                   unchanged=n("unchanged"), rejected=n("rejected"), failed=n("failed"), uncertain=n("uncertain"),
                   totals=CurrencyTotals.from_json(data.get("totals", {})), mismatch_count=n("mismatch_count"),
                   mismatches=list(data.get("mismatches", [])))

    def merge(self, other: Tally) -> None:
        for k in ("read", "created", "existing", "updated", "unchanged", "rejected", "failed", "uncertain",
                  "mismatch_count"):
            setattr(self, k, getattr(self, k) + getattr(other, k))
        self.totals.merge(other.totals)
        self.mismatches = (self.mismatches + other.mismatches)[:_MAX_MISMATCHES]
