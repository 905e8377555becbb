"""Coperniq catalog items by SKU: the active catalogue, listed once per run, and the create of
a SKU none holds (``--create-missing items``). Each SKU's ``"<id> <unit cost>"`` is resolved
once per job (``job.resolve``, kept in the resume file); lines sharing a catalog item are merged
(``bulk.targets.coperniq_mapping.merge_lines``). A :class:`Catalog` is run state: made in
``start_run``.
"""

from __future__ import annotations

import functools
from decimal import Decimal

import anyio

from ..errors import InvalidRecord, RecordRefused
from ..records import Record
from ..refs import begin_create, record_created
from ..refs import found as refs_found
from ..transport import Reply, Request
from ._coperniq_quota import Send
from ._coperniq_records import Missing
from .base import Job
from .coperniq_mapping import exact, merge_lines

__all__ = ["Catalog", "line_names"]


def line_names(record: Record, default_item: str) -> list[str]:
    """How a refusal names each line's catalog item."""
    return [f"catalog item {ln.item_ref}" if ln.item_ref else
            f"the default catalog item {default_item} (a line without item_ref)" for ln in record.lines]


class Catalog:
    """This run's catalogue; ``send`` is the client's gated send."""

    def __init__(self, *, send: Send, default_item: str, create: bool) -> None:
        self._send, self.default_item, self.create = send, default_item, create
        # bound to the running loop lazily
        self._create_lock: anyio.Lock | None = None
        self._catalogue: dict[str, str] | None = None
        self._lock: anyio.Lock | None = None

    async def items(self, record: Record, job: Job) -> list[tuple[int, Decimal, list[int]]]:
        """(catalog item id, unit cost, the record's line indexes) for every merged line."""
        resolved = []
        for i, line in enumerate(record.lines):
            sku = line.item_ref or self.default_item
            factory = (functools.partial(self.make, sku, line.title, line.unit_price, job)
                       if self.create and line.item_ref else functools.partial(self.item, sku, job))
            try:
                value = await job.resolve("coperniq.catalog", sku, factory)
            except Missing as exc:
                raise InvalidRecord(record.line_no, f"lines[{i}].item_ref", str(exc),
                                    "create the item in Coperniq's catalog, fix item_ref, or set "
                                    "--option default_catalog_item=SKU for lines without one") from None
            catalog_id, _, cost = value.partition(" ")
            resolved.append((int(catalog_id), Decimal(cost)))
        groups = merge_lines(record, [catalog_id for catalog_id, _ in resolved], line_names(record, self.default_item))
        return [(resolved[g[0]][0], resolved[g[0]][1], g) for g in groups]

    async def item(self, sku: str, job: Job) -> str:
        """``"<id> <unit cost>"`` of the active catalog item with this SKU (one list per run)."""
        if self._lock is None:
            self._lock = anyio.Lock()
        async with self._lock:
            if self._catalogue is None:
                reply = await self._send(job, Request("GET", "/catalog-items", kind="read"), stage="item")
                catalogue: dict[str, str] = {}
                for item in exact(reply):
                    key = item.get("sku")
                    if key and not item.get("isArchived"):
                        cost = item.get("cost") or 0
                        catalogue[key] = "" if key in catalogue else f"{item['id']} {cost}"
                self._catalogue = catalogue
        found = self._catalogue.get(sku)
        if not found:
            what = "several active catalog items have" if found == "" else "no active catalog item has"
            raise Missing(f"{what} the SKU {sku!r}")
        return found

    async def make(self, sku: str, title: str, price: Decimal, job: Job) -> str:
        """:meth:`item`, creating the item when no active one has the SKU
        (``--create-missing items``): ``POST /catalog-items`` with the first line's title as its
        name, type SERVICE, category INSTALLATION (``OTHER`` is in both category enums, which the
        document's ``oneOf`` refuses), cost 0 and the line's unit price. Coperniq has no key to
        make the create idempotent, so the catalogue is listed afresh before every create and
        after a lost answer (creates one at a time, each listing seeing the ones before), and a
        create refused for its SKU (taken meanwhile) takes the item that holds it."""
        try:
            listed = await self.item(sku, job)
        except Missing as exc:
            if "several" in str(exc):
                raise
        else:
            refs_found(job, "item", sku, listed.partition(" ")[0])  # made by a killed run of this job?
            return listed
        if self._create_lock is None:
            self._create_lock = anyio.Lock()
        async with self._create_lock:
            fresh = await self._fresh(sku, job)
            if fresh is not None:
                refs_found(job, "item", sku, fresh.partition(" ")[0])
                return fresh
            await begin_create(job, "item", sku)
            body = {"name": title[:255] or sku, "type": "SERVICE", "category": "INSTALLATION", "cost": 0,
                    "price": price, "sku": sku, "description": None}
            found: list[str] = []

            async def recover() -> Reply | None:
                hit = await self._fresh(sku, job)
                if hit is None:
                    return None
                found.append(hit)
                return Reply(200, {}, b"")

            try:
                reply = await self._send(job, Request("POST", "/catalog-items", json=body), stage="item",
                                         recover=recover)
            except RecordRefused as exc:
                if exc.status != 400 or exc.field != "sku" or (hit := await self._fresh(sku, job)) is None:
                    raise
                refs_found(job, "item", sku, hit.partition(" ")[0])  # ours only if a killed run began it
                return hit  # another's create holds the SKU: use it
            if found:
                value = found[0]
            else:
                item = exact(reply)
                value = f"{item['id']} {item.get('cost') or 0}"
            record_created(job, "item", sku, value.partition(" ")[0])
            assert self._catalogue is not None
            self._catalogue[sku] = value
            return value

    async def _fresh(self, sku: str, job: Job) -> str | None:
        """``"<id> <cost>"`` of the active catalog item with ``sku`` in a fresh listing, else None
        (the run's cached catalogue is replaced by it)."""
        reply = await self._send(job, Request("GET", "/catalog-items", kind="read"), stage="item")
        catalogue: dict[str, str] = {}
        for item in exact(reply):
            key = item.get("sku")
            if key and not item.get("isArchived"):
                catalogue[key] = "" if key in catalogue else f"{item['id']} {item.get('cost') or 0}"
        self._catalogue = catalogue
        found = catalogue.get(sku)
        if found == "":
            raise Missing(f"several active catalog items have the SKU {sku!r}")
        return found
