"""What a job has done so far: record outcomes, money totals and API total mismatches.

Cumulative across every resumed run of the job (it is saved in each checkpoint), so the
summary of a run directory describes everything done for its input.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import MAX_EMAX, MAX_PREC, MIN_EMIN, Context, Decimal, Inexact, InvalidOperation, Overflow
from functools import reduce
from typing import Any

from .money import CurrencyTotals, Totals, minor_units

__all__ = ["Tally"]

_MAX_MISMATCHES = 100
_BATCH = 1024  # invoices of one currency kept aside at most (see Tally.add_totals)

# Sums of a batch: exact (Decimal addition at unbounded precision never rounds; Inexact traps
# if it ever would), so a batch's sum added once equals its invoices added one by one.
_EXACT = Context(prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN, traps=[Inexact, InvalidOperation, Overflow])


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
    _totals: CurrencyTotals = field(default_factory=CurrencyTotals)
    mismatch_count: int = 0
    mismatches: list[dict[str, str]] = field(default_factory=list)
    #: invoices counted by add_totals and not yet in _totals, by currency (see add_totals)
    _pending: dict[str, list[Totals]] = field(default_factory=dict, repr=False, compare=False)
    #: invoices counted by add_minor and not yet in _totals, by currency: [count, net, tax] in minor units
    _minor: dict[str, list[int]] = field(default_factory=dict, repr=False, compare=False)

    @property
    def totals(self) -> CurrencyTotals:
        """Per-currency counts and sums of every invoice in the ID map (pending ones folded in)."""
        if self._pending or self._minor:
            self._fold()
        return self._totals

    def add_minor(self, currency: str, net: int, tax: int) -> None:
        """Count one invoice whose totals are ``net`` and ``tax`` (gross: their sum) in minor units
        of ``currency`` (:func:`bulk._money_minor.lines_minor`): the same as :meth:`add_totals`
        of those amounts as Decimals (exponent minus the currency's), digit for digit, for less
        work once per invoice: integer sums, made Decimals when :attr:`totals` is next read.
        :meth:`bulk._recorder.Recorder.created` has the same steps inline: keep the two alike."""
        acc = self._minor.get(currency)
        if acc is None:
            self._minor[currency] = [1, net, tax]
        else:
            acc[0] += 1
            acc[1] += net
            acc[2] += tax

    def add_totals(self, currency: str, totals: Totals) -> None:
        """Count one invoice's totals: kept aside and summed in one batch when :attr:`totals` is
        next read (a checkpoint, the summary), each amount with one exact addition per invoice
        instead of a :class:`CurrencyTotals` update per invoice (its Python calls cost more
        than the additions). The sums are the same digit for digit: addition is exact and
        associative here, and a sum's exponent is its terms' smallest either way."""
        batch = self._pending.get(currency)
        if batch is None:
            self._pending[currency] = [totals]
        else:
            batch.append(totals)
            if len(batch) >= _BATCH:  # memory stays bounded however rarely the totals are read
                self._fold()

    def _fold(self) -> None:
        add = _EXACT.add
        doc: dict[str, dict[str, int | str]] = {}
        for code, batch in self._pending.items():
            net, tax = reduce(add, [t.net for t in batch]), reduce(add, [t.tax for t in batch])
            # Totals' gross == net + tax, so the gross sum is net's plus tax's (exact, the same
            # digits and exponent): one addition a batch instead of one an invoice.
            doc[code] = {"invoices": len(batch), "net": str(net), "tax": str(tax), "gross": str(add(net, tax))}
        self._pending.clear()
        self._totals.merge(CurrencyTotals.from_json(doc))  # decimal strings: exact both ways
        if self._minor:
            # n minor units are n * 10^-e exactly (scaleb at unbounded precision never rounds): the
            # Decimal sum of the same invoices' amounts, whose exponent is -e too.
            doc = {}
            for code, (count, net_units, tax_units) in self._minor.items():
                e = -minor_units(code)
                doc[code] = {"invoices": count, "net": str(_EXACT.scaleb(net_units, e)),
                             "tax": str(_EXACT.scaleb(tax_units, e)),
                             "gross": str(_EXACT.scaleb(net_units + tax_units, e))}
            self._minor.clear()
            self._totals.merge(CurrencyTotals.from_json(doc))

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
                   _totals=CurrencyTotals.from_json(data.get("totals", {})), mismatch_count=n("mismatch_count"),
                   mismatches=list(data.get("mismatches", [])))

    def merge(self, other: Tally) -> None:
        for k in ("read", "created", "existing", "updated", "unchanged", "rejected", "failed", "uncertain",
                  "mismatch_count"):
            setattr(self, k, getattr(self, k) + getattr(other, k))
        self.totals.merge(other.totals)
        self.mismatches = (self.mismatches + other.mismatches)[:_MAX_MISMATCHES]
