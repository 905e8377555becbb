"""Which Coperniq project or account a record's invoice belongs to (its ``recordId``).

Known offline (``extra.recordId``, a row of ``--option record_map=FILE.csv``), else the account
titled with the customer's external id (``GET /accounts?title=``, resolved once per job), made
when there is none with ``--create-missing customers``. The rules are in
``bulk.targets.coperniq_mapping``; :class:`Records` holds only options, no run state.
"""

from __future__ import annotations

import functools
from typing import Any

from ..errors import InvalidRecord
from ..records import Record
from ..refs import begin_create, record_created
from ..refs import found as refs_found
from ..transport import Reply, Request
from ._coperniq_quota import Send
from .base import Job
from .coperniq_mapping import exact

__all__ = ["Missing", "Records"]


class Missing(LookupError):
    """A lookup found nothing; turned into a per-record InvalidRecord by the caller."""

    def __init__(self, message: str, *, none: bool = False) -> None:
        super().__init__(message)
        self.none = none  # nothing at all (not several): a create may fill the gap


class Records:
    """Finds (or makes) the record of an invoice; ``send`` is the client's gated send."""

    def __init__(self, *, record_map: dict[str, tuple[int, str | None]], lookup: str, create: bool,
                 send: Send) -> None:
        self.record_map, self.lookup, self.create, self._send = record_map, lookup, create, send

    def known(self, record: Record) -> tuple[int, str | None] | None:
        """(recordId, kind) known offline, or None when it is to be looked up by title."""
        raw = record.extra.get("recordId")
        if raw is not None:
            text = str(raw) if type(raw) in (int, str) else ""
            if text.isascii() and text.isdigit() and int(text) >= 1:
                return int(text), None
            raise InvalidRecord(record.line_no, "extra.recordId", f"must be a positive integer, got {raw!r}",
                                "give the id of the Coperniq project or account the invoice belongs to")
        found = self.record_map.get(record.customer.external_id)
        if found is not None:
            return found
        if self.lookup == "title" or self.create:  # found by title, or made (--create-missing)
            return None
        where = "is not in the record_map file" if self.record_map else "has no record map"
        raise InvalidRecord(record.line_no, "extra.recordId",
                            f"no Coperniq recordId: customer {record.customer.external_id!r} {where}",
                            "add extra.recordId, or map the customer in --option record_map=FILE.csv "
                            "(customer_external_id,record_id), or allow --option record_lookup=title")

    async def resolve(self, record: Record, job: Job) -> tuple[int, str | None]:
        """(recordId, kind) of the record's invoice: known offline, or resolved once per job."""
        known = self.known(record)
        if known is not None:
            return known
        customer = record.customer.external_id
        factory = (functools.partial(self.account, record, job) if self.create
                   else lambda: self.by_title(customer, job))
        try:
            found = await job.resolve("coperniq.record", customer, factory)
        except Missing as exc:
            raise InvalidRecord(record.line_no, "customer.external_id", str(exc),
                                "add extra.recordId or map the customer in --option record_map=FILE.csv") from None
        return int(found), "accounts"

    async def by_title(self, title: str, job: Job) -> str:
        for page in range(1, 11):
            reply = await self._send(job, Request("GET", "/accounts", params={
                "title": title, "page": str(page), "page_size": "100"}, kind="read"), stage="customer")
            rows = reply.json() or []
            hits = [row["id"] for row in rows if row.get("title") == title]
            if len(hits) > 1:
                raise Missing(f"{len(hits)} Coperniq accounts are titled {title!r}")
            if hits:
                return str(hits[0])
            if len(rows) < 100:
                break
        raise Missing(f"no Coperniq account is titled {title!r}", none=True)

    async def account(self, record: Record, job: Job) -> str:
        """The account titled with the customer's external id; created when there is none
        (``--create-missing customers``). The create is ``POST /accounts?match_by=title&
        match_found_strategy=skip``: Coperniq itself answers an account already titled so (a
        copy of a killed run's create) instead of making a second one, and after a lost answer
        the title is looked up again before the create is resent."""
        title = record.customer.external_id
        try:
            hit = await self.by_title(title, job)
        except Missing as exc:
            if not exc.none:
                raise
        else:
            refs_found(job, "account", title, hit)  # made by a killed run of this job?
            return hit
        c = record.customer
        address = c.address
        line = ", ".join(p for p in (address.line1, address.line2, address.postal_code, address.city, address.region,
                                     address.country) if p) if address is not None else ""
        body: dict[str, Any] = {"title": title, "address": [line], "accountType": "COMMERCIAL" if c.company else
                                "RESIDENTIAL", "primaryEmail": c.email}
        found: list[str] = []

        async def recover() -> Reply | None:
            try:
                found.append(await self.by_title(title, job))
                return Reply(200, {}, b"")
            except Missing:
                return None

        await begin_create(job, "account", title)
        reply = await self._send(job, Request("POST", "/accounts", params={
            "match_by": "title", "match_found_strategy": "skip"}, json=body), stage="customer", recover=recover)
        account_id = found[0] if found else str(exact(reply)["id"])
        record_created(job, "account", title, account_id)
        return account_id
