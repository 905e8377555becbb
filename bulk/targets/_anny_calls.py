"""One run's requests to anny: how every call is built, spaced and sent, and the look-ups.

:class:`Calls` is the anny adapter's run state (made by ``AnnyTarget.start_run``, in every
process that uploads): the organization every call carries (``?o=``), identical-request
spacing through the engine's :class:`~bulk.spacing.KeySpacer` (:class:`IdenticalSpacer`
only says what "identical" means and the 1 s window), the settle clock (step 1 of the
module docstring of ``bulk.targets.anny``), a create whose lost answer is looked up, once
``settle`` seconds have passed, before any resend, and the invoice look-ups every recovery
starts from.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

import anyio

from ..errors import RecordRefused
from ..spacing import KeySpacer
from ..transport import Reply, Request
from ._anny_wire import API, JSONAPI, Invoice, exact
from .base import Job, RunJob

__all__ = ["Calls", "IdenticalSpacer"]

T = TypeVar("T")
_FOUND = Reply(200, {}, b"")  # what a recover() returns when the lookup found the object


class IdenticalSpacer(KeySpacer):
    """Keeps identical requests (same method, path, query and body) under ``limit`` per second,
    counted from their *completion* (:class:`~bulk.spacing.KeySpacer`, the engine's per-key
    spacing): a request completed before the next one leaves surely arrived before it, so the
    server never sees ``limit + 1`` within a second."""

    def __init__(self, limit: int) -> None:
        super().__init__(limit, window=1.0)

    def request_slot(self, req: Request) -> AbstractAsyncContextManager[None]:
        params = req.params.items() if isinstance(req.params, Mapping) else req.params or ()
        return self.slot((req.method, req.path, tuple(sorted(params)), req.body()))


class Calls:
    """The run's calls to anny; shared by every ``upload`` of the run (one per process)."""

    def __init__(self, organization: str, identical_per_second: int, settle: float) -> None:
        self.organization = organization
        self.settle = settle
        self.spacer = IdenticalSpacer(identical_per_second)
        self.started = time.monotonic()  # moved to this process's first answer from anny
        self.answered = False
        self.resumed = False  # a record an earlier run may have sent was seen

    def req(self, method: str, path: str, params: Sequence[tuple[str, str]] = (), body: Any = None) -> Request:
        return Request(method, API + path, params=[("o", self.organization), *params], json=body,
                       kind="read" if method == "GET" else "write", content_type=JSONAPI)

    async def send(self, job: RunJob, req: Request, stage: str,
                   recover: Callable[[], Awaitable[Reply | None]] | None = None) -> Reply:
        async with self.spacer.request_slot(req):
            reply = await job.send(req, stage=stage, recover=recover)
        if not self.answered:
            # Every request of an earlier (killed) run left before this answer came back.
            self.answered, self.started = True, time.monotonic()
        return reply

    async def create(self, job: Job, req: Request, stage: str,
                     find: Callable[[], Awaitable[T | None]]) -> tuple[Reply | None, T | None]:
        """Send a create; after an answer that may be lost, ``find()`` looks for it first, once
        ``settle`` seconds have passed (the lost request may still be on its way: it lands
        within ``settle`` seconds, anny's contract). Returns ``(reply, None)`` when created
        now, ``(None, found)`` when found."""
        found: T | None = None

        async def recover() -> Reply | None:
            nonlocal found
            # Session.send calls this right after its backoff, which follows the failure: a
            # full ``settle`` from now is past ``settle`` after the failure (a bound, not a
            # measure: _send.py does not say when it failed). Lost answers only: rare.
            if self.settle > 0:
                await anyio.sleep(self.settle)
            found = await find()
            return _FOUND if found is not None else None

        reply = await self.send(job, req, stage, recover)
        return (None, found) if reply is _FOUND else (reply, None)

    async def settled(self, job: Job) -> None:
        """Wait until requests an earlier run had on their way have reached anny (step 1):
        ``settle`` seconds after this process's first answer (an upload process of
        ``--processes`` never runs ``prepare``: it asks first)."""
        self.resumed = True
        if not self.answered:
            await self.send(job, self.req("GET", "/invoices", [("page[size]", "1")]), stage="settle")
        left = self.started + self.settle - time.monotonic()
        if left > 0:
            await anyio.sleep(left)

    async def get_invoice(self, job: Job, invoice_id: str) -> Invoice | None:
        try:
            reply = await self.send(job, self.req("GET", f"/invoices/{invoice_id}", [("include", "items")]),
                                    "invoice")
        except RecordRefused as exc:
            if exc.status == 404:
                return None
            raise
        doc = exact(reply)
        return Invoice.parse(doc["data"], doc.get("included"))

    async def find_invoice(self, job: Job, number: str) -> Invoice | None:
        reply = await self.send(job, self.req("GET", "/invoices", [("filter[number]", number),
                                                                   ("include", "items")]), "invoice")
        doc = exact(reply)
        for row in doc.get("data") or []:
            if (row.get("attributes") or {}).get("number") == number:
                return Invoice.parse(row, doc.get("included"))
        return None
