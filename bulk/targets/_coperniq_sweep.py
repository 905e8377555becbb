"""The sweep of late copies: step 3 of "Exactly once" in ``bulk.targets.coperniq``.

At the end of every run (``CoperniqTarget.finish``) the invoices that may hold a late copy of a
watched record (``WATCH`` in the resume file) are listed afresh, by record or by recent change,
and every exact copy of the kept invoice is deleted (``REMOVED``); a copy that differs is kept
and named. :meth:`Sweep.remove_copies` also serves the look before a create, which removes the
copies already there. A :class:`Sweep` is run state (its tally is this run's): made in
``start_run``.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from typing import Any

import anyio

from ..errors import RecordError, RecordRefused, RetryableError
from ..transport import Request
from ._coperniq_invoices import Invoices
from ._coperniq_quota import Send
from .base import RunJob
from .coperniq_existing import line_items
from .coperniq_mapping import exact, external_id_of

__all__ = ["REMOVED", "WATCH", "Sweep"]

WATCH = "coperniq.watch"  # external id -> "record_id kind invoice_id": may have a late copy in flight
REMOVED = "coperniq.removed"  # invoice id of a removed late copy -> its external id
_SWEEPS = 8  # records swept at once
_RECORDS_SWEEP_MAX = 100  # sweep=auto lists each record's invoices up to this many records, else the recent ones
_DATE_MARGIN = 60  # s: the API's Date and its updatedAt may come from different hosts' clocks


class Sweep:
    """This run's sweep (``mode``: ``--option sweep``); ``send`` is the client's gated send."""

    def __init__(self, *, send: Send, invoices: Invoices, mode: str) -> None:
        self._send, self._invoices, self.mode = send, invoices, mode
        self._tally = {"unswept": 0, "kept_differs": 0, "kept_missing": 0}  # this run's reconciliation
        self._differs: list[str] = []

    async def run(self, job: RunJob) -> dict[str, Any]:
        """Delete every exact copy of a watched record's kept invoice; the ``reconciled`` report."""
        watched = job.remembered(WATCH)
        by_record: dict[tuple[int, str | None], dict[str, str]] = defaultdict(dict)
        since = None
        for external_id, value in watched.items():
            rid, rkind, invoice_id, started = value.split(" ")
            by_record[(int(rid), None if rkind == "-" else rkind)][external_id] = invoice_id
            since = int(started) if since is None else min(since, int(started))
        mode = self.mode if self.mode != "auto" else (
            "records" if len(by_record) <= _RECORDS_SWEEP_MAX else "recent")
        if mode == "records" or since is None:
            limiter = anyio.CapacityLimiter(_SWEEPS)

            async def sweep(record_id: int, kind: str | None, keep: dict[str, str]) -> None:
                async with limiter:
                    try:
                        found = [dict(inv) async for page in self._invoices.pages(record_id, kind, job)
                                 for inv in page]
                    except (RetryableError, RecordError):
                        self._tally["unswept"] += len(keep)  # the next run sweeps it again
                        return
                    await self.remove_copies(keep, found, job, listed_all=True)

            async with anyio.create_task_group() as tg:
                for (record_id, kind), keep in by_record.items():
                    tg.start_soon(sweep, record_id, kind, keep)
        else:
            keep = {ext: inv for group in by_record.values() for ext, inv in group.items()}
            try:
                found = await self._recent(since - _DATE_MARGIN, job)
            except (RetryableError, RecordError):
                self._tally["unswept"] += len(keep)
            else:
                await self.remove_copies(keep, found, job, listed_all=False)
        return self._report(len(watched), len(job.remembered(REMOVED)), mode)

    async def _recent(self, since: int, job: RunJob) -> list[dict[str, Any]]:
        """Every invoice updated after ``since`` (the API's clock), oldest first: any copy that
        can have landed late was created after the first answer of the run that watched it."""
        after = dt.datetime.fromtimestamp(since, dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        found: list[dict[str, Any]] = []
        page = 1
        while True:
            reply = await self._send(job, Request("GET", "/invoices", params={
                "updated_after": after, "page": str(page), "page_size": "100", "order_by": "asc"},
                kind="read"), stage="reconcile")
            data = exact(reply)
            found.extend(dict(inv) for inv in data["items"])
            if not data.get("has_more"):
                return found
            page += 1

    async def remove_copies(self, keep: dict[str, str], found: list[dict[str, Any]], job: RunJob, *,
                            listed_all: bool, strict: bool = False) -> None:
        """Delete the exact copies among ``found`` of each kept invoice (external id -> invoice id).
        ``listed_all``: ``found`` holds all of the record's invoices (else only recent ones, and
        a kept invoice not among them is read by id). ``strict``: a DELETE that keeps failing
        raises (the record fails and is reported) instead of being left to the next sweep."""
        copies: dict[str | None, list[dict[str, Any]]] = defaultdict(list)
        for invoice in found:
            ext = external_id_of(invoice.get("description"))
            if ext in keep:
                copies[ext].append(invoice)
        for external_id, invoice_id in keep.items():
            mine = copies.get(external_id, [])
            if invoice_id == "-":
                # The record ended uncertain: no id in id_map.csv; keep the oldest copy. Every
                # copy was made after its run's first answer, so a recent listing holds them all.
                if not mine:
                    continue
                invoice_id = str(min(int(c["id"]) for c in mine))
            kept = next((c for c in mine if str(c["id"]) == invoice_id), None)
            others = [c for c in mine if c is not kept]
            if kept is None and not listed_all and others:
                try:
                    kept = exact(await self._send(job, Request("GET", f"/invoices/{invoice_id}", kind="read"),
                                                  stage="reconcile"))
                except RecordRefused as exc:
                    if exc.status != 404:  # not "gone": unknown, so checked again by the next run
                        self._tally["unswept"] += 1
                        continue
                except RetryableError:
                    self._tally["unswept"] += 1
                    continue
            if kept is None:
                if listed_all or others:
                    self._tally["kept_missing"] += 1
                continue
            for other in others:
                if _content(other) != _content(kept):
                    self._tally["kept_differs"] += 1
                    self._differs.append(external_id)
                    continue
                try:
                    await self._delete(int(other["id"]), job)
                except (RetryableError, RecordError):
                    if strict:
                        raise
                    self._tally["unswept"] += 1
                    continue
                job.remember(REMOVED, str(other["id"]), external_id)

    def _report(self, watched: int, removed: int, mode: str) -> dict[str, Any]:
        tally, differs = self._tally, self._differs
        report: dict[str, Any] = {"watched": watched, "duplicates_removed": removed, **tally, "sweep": mode}
        if watched:
            note = (f"{watched} invoices are watched for late copies of an earlier attempt "
                    f"(the API has no idempotency): {removed} such copies deleted so far")
            if tally["unswept"]:
                note += f"; {tally['unswept']} could not be checked now"
            if differs:
                note += (f"; {len(differs)} other invoices carry a watched id but differ (e.g. {differs[0]!r}):"
                         " check them")
            report["note"] = note + "; run the same command again later to sweep again"
        return report

    async def _delete(self, invoice_id: int, job: RunJob) -> None:
        try:
            await self._send(job, Request("DELETE", f"/invoices/{invoice_id}"), stage="reconcile")
        except RecordRefused as exc:
            if exc.status != 404:  # 404: gone already (our earlier DELETE, whose answer was lost)
                raise


def _content(invoice: dict[str, Any]) -> tuple[Any, ...]:
    """What ``bulk`` sent for an invoice, as the API keeps it: two copies of one create are equal."""
    return (invoice.get("description"), invoice.get("status"), (invoice.get("record") or {}).get("id"),
            invoice.get("dueDate"), line_items(invoice.get("lineItems")))
