"""A Coperniq record's invoices, as the client reads them to find an invoice that may exist.

The kind of a record (``projects`` or ``accounts``) is probed once per job when the map does
not say it; the record's invoices are read page by page; :meth:`Invoices.find` looks afresh for
the one carrying an external id (after a lost answer), and :meth:`Invoices.listing` lists them
once per record per run, single flight (what earlier runs and jobs made: step 1 of "Exactly
once" in ``bulk.targets.coperniq``). An :class:`Invoices` is run state: made in ``start_run``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio

from ..errors import RecordRefused
from ..transport import Request
from ._coperniq_quota import Send
from .base import Job, RunJob
from .coperniq_mapping import exact, external_id_of

__all__ = ["Invoices"]


class Invoices:
    """This run's invoice listings; ``send`` is the client's gated send."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self._listings: dict[int, dict[str | None, list[dict[str, Any]]]] = {}
        self._listing_flights: dict[int, anyio.Event] = {}

    async def _kind(self, record_id: int, kind: str | None, job: RunJob) -> str:
        if kind is not None:
            return kind
        return await job.resolve("coperniq.kind", str(record_id), lambda: self._probe(record_id, job))

    async def _probe(self, record_id: int, job: RunJob) -> str:
        for kind in ("projects", "accounts"):
            try:
                await self._send(job, Request("GET", f"/{kind}/{record_id}/invoices", params={"page_size": "1"},
                                              kind="read"), stage="lookup")
                return kind
            except RecordRefused as exc:
                if exc.status != 404:
                    raise
        return "none"  # no such record: nothing to find; the create will say so

    async def pages(self, record_id: int, kind: str | None, job: RunJob) -> AsyncIterator[list[dict[str, Any]]]:
        """The record's invoices, a page (up to 100, newest first) at a time."""
        kind = await self._kind(record_id, kind, job)
        page = 1
        while kind != "none":
            reply = await self._send(job, Request("GET", f"/{kind}/{record_id}/invoices", params={
                "page": str(page), "page_size": "100", "order_by": "desc"}, kind="read"), stage="lookup")
            data = exact(reply)
            yield data["items"]
            if not data.get("has_more"):
                return
            page += 1

    async def find(self, external_id: str, record_id: int, kind: str | None, job: Job) -> dict[str, Any] | None:
        """The record's invoice whose description starts with ``external_id`` (fresh listing)."""
        async for items in self.pages(record_id, kind, job):
            for invoice in items:
                if external_id_of(invoice.get("description")) == external_id:
                    return dict(invoice)
        return None

    async def listing(self, record_id: int, kind: str | None, job: Job) -> dict[str | None, list[dict[str, Any]]]:
        """All of a record's invoices (lists) by external id, listed once per run (single flight):
        what earlier runs made. (A lost answer in this run is looked up afresh by :meth:`find`.)"""
        while record_id not in self._listings:
            flight = self._listing_flights.get(record_id)
            if flight is not None:
                await flight.wait()  # the owner failed if there is still no listing: try ourselves
                continue
            flight = self._listing_flights[record_id] = anyio.Event()
            try:
                found: dict[str | None, list[dict[str, Any]]] = {}
                async for items in self.pages(record_id, kind, job):
                    for invoice in items:
                        found.setdefault(external_id_of(invoice.get("description")), []).append(invoice)
                self._listings[record_id] = found
            finally:
                del self._listing_flights[record_id]
                flight.set()
        return self._listings[record_id]
