"""ChargeOver: the ids an invoice references (customer, currency, items), resolved once per job.

:class:`References` is the ChargeOver adapter's run state for them (made by
``ChargeOverTarget.start_run``): every id goes through ``job.resolve`` (single flight, cached,
kept in the resume file); what a look-up did not find is remembered for the run, so records
naming an unknown item or currency fail without asking again. A customer is found by external
key or created once; an item only with ``--create-missing items`` (``title``), named after the
first line that uses it. A create refused because its key is taken resolves to that object
(``Calls.create``), and is listed as ours when this job began it (``bulk.refs``).
"""

from __future__ import annotations

from urllib.parse import quote

from ..errors import RecordRefused
from ..records import Record
from ..refs import begin_create, record_created
from ..refs import found as refs_found
from ._chargeover_calls import Calls
from .base import Job, RunJob
from .chargeover_mapping import API, by_key, customer_body

__all__ = ["NotFound", "References"]


class NotFound(Exception):
    """No item has this external key (and ``--create-missing items`` is off)."""


class References:
    """The run's resolution of customer, currency and item ids (one per process)."""

    def __init__(self, calls: Calls, currency_map: dict[str, str]) -> None:
        self.calls = calls
        self.currency_map = currency_map
        self.missing: set[tuple[str, str]] = set()  # (kind, key) not found this run

    async def customer(self, record: Record, job: Job) -> str:
        key = record.customer.external_id
        hit = await self.calls.get(job, by_key("customer", key), stage="customer")
        if isinstance(hit, dict):
            refs_found(job, "customer", key, str(hit["customer_id"]))  # made by a killed run of this job?
            return str(hit["customer_id"])
        await begin_create(job, "customer", key)
        customer_id, existed, _ = await self.calls.create(job, "customer", customer_body(record), key)
        self._created(job, "customer", key, customer_id, existed)
        return customer_id

    def _created(self, job: RunJob, kind: str, key: str, api_id: str, existed: bool) -> None:
        """List what ``create`` gave: made now, or found after its answer was lost (ours), or
        refused as taken (ours if an earlier run of this job began that create)."""
        if not existed or (kind, key) in self.calls.recovered:
            record_created(job, kind, key, api_id)
        else:
            refs_found(job, kind, key, api_id)

    async def currency_id(self, job: Job, code: str) -> str:
        if code in self.currency_map:
            return self.currency_map[code]

        async def find() -> str:
            uri = f"{API}/currency?where=" + quote(f"currency_iso4217:EQUALS:{code}", safe=":")
            rows = None if ("currency", code) in self.missing else await self.calls.get(job, uri, stage="currency")
            if not rows:
                self.missing.add(("currency", code))
                raise RecordRefused(404, f"currency: {code} is not set up in the ChargeOver account; add it "
                                    f"there, or map it with --option currency_map={code}:<currency_id>",
                                    stage="currency")
            return str(rows[0]["currency_id"])

        return await job.resolve("chargeover.currency", code, find)

    async def item_id(self, job: RunJob, ref: str, *, direct: bool = False, title: str | None = None) -> str:
        """The item's id by external key; with ``title`` (``--create-missing items``) an item
        the lookup does not find is created, named ``title``."""
        async def find() -> str:
            found = None if ("item", ref) in self.missing and title is None else await self.calls.get(
                job, by_key("item", ref), stage="item", direct=direct)
            if isinstance(found, dict):
                if title is not None:
                    refs_found(job, "item", ref, str(found["item_id"]))  # made by a killed run of this job?
                return str(found["item_id"])
            if title is None:
                self.missing.add(("item", ref))
                raise NotFound(ref)
            # create looks the key up before any resend, and a 400 "key in use" is looked up
            # too: a copy of a killed run that lands first is used, never doubled (keys are unique).
            await begin_create(job, "item", ref)
            item_id, existed, _ = await self.calls.create(
                job, "item", {"name": title[:255], "external_key": ref, "type": "service"}, ref)
            self._created(job, "item", ref, item_id, existed)
            return item_id

        return await job.resolve("chargeover.item", ref, find)
