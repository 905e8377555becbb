"""anny: an invoice that already holds the record's number (``--on-existing``).

Found as before: the create's 422 on ``number`` (or, for a record an earlier run may have
sent, the ``filter[number]`` look-up), then read with its items. Compared with the record:
the attributes bulk sends that anny lets change (``notes``, ``issued_at``, ``due_date``,
``vat_number``, ``invoicing_party``), the items as a multiset of (title, subtitle, quantity,
tax rate, unit amount), and the status.

The update works only on a draft (anny locks an invoice once sent): ``PATCH /invoices/{id}``
for the attributes, ``DELETE /items/{id}`` for every item that matches no line (both our
assumptions: anny documents neither's shape), then the ordinary steps of a create: the
missing lines are added one item at a time, the draft is verified, then sent or set paid as
the record says. Several requests, so the update is marked in ``job.progress`` before the
first write: a killed run's resumed run repeats the PATCH (the same attributes) and deletes
the items still unmatched, and the item steps resume from their own read as they always do.
A sent or paid invoice: anny's 422 (``Only a draft invoice can be changed``) fails the record
with its status and message, and nothing was changed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ..errors import RecordRefused
from ..existing import UPDATING, settle
from ..records import Record
from ._anny_calls import Calls
from ._anny_wire import Invoice
from .base import Job, RunJob

if TYPE_CHECKING:
    from .anny import AnnyTarget

__all__ = ["UPDATABLE", "changed_attributes", "remove_items", "settle_invoice", "update_begun"]

_RANK = {"draft": 0, "sent": 1, "paid": 2}
UPDATABLE = ("notes", "issued_at", "due_date", "vat_number", "invoicing_party")


def changed_attributes(have: Mapping[str, Any], want: Mapping[str, Any]) -> dict[str, Any]:
    """The attributes to PATCH: those bulk sends that differ from the invoice's."""
    return {k: want.get(k) for k in UPDATABLE if k in want and (have.get(k) or None) != (want.get(k) or None)}


async def settle_invoice(target: AnnyTarget, job: Job, record: Record, invoice: Invoice, want: Mapping[str, Any],
                         *, ours: bool, strangers: list[str], missing: int,
                         reread: Callable[[], Awaitable[Invoice | None]]) -> tuple[str, Invoice]:
    """The ID map action, and the invoice to carry on with (re-read after an update).

    ``strangers``: ids of items that match no line; ``missing``: lines no item matches. An
    invoice this job may have made itself (``ours``) differs only by attributes or strangers:
    its missing lines are the create's own unfinished steps."""
    calls = target.calls
    patch = changed_attributes(invoice.attributes, want)
    # a status the record has not reached yet (a sent invoice cannot go back to a draft)
    status_differs = not ours and _RANK.get(invoice.status, 0) < _RANK.get(record.status, 0)
    same = not patch and not strangers and not status_differs and (ours or not missing)
    now = invoice

    async def update() -> bool:
        nonlocal now
        if patch:
            body = {"data": {"type": "invoices", "id": invoice.id, "attributes": patch}}
            await calls.send(job, calls.req("PATCH", f"/invoices/{invoice.id}", body=body), "update")
        await remove_items(calls, job, strangers)
        again = await reread()
        if again is None:
            raise RecordRefused(404, f"invoice {invoice.id} is gone from anny", stage="update")
        now = again
        return not changed_attributes(now.attributes, want)

    action = await settle(job, target.on_existing, target="anny", invoice_id=invoice.id,
                          how=f"number {record.external_id!r}", same=same, ours=ours, update=update,
                          field="number")
    return action, now


async def remove_items(calls: Calls, job: RunJob, item_ids: Iterable[str]) -> None:
    """``DELETE /items/{id}`` for each item, one after another; a 404 means gone already (our
    earlier DELETE, its answer lost)."""
    for item_id in item_ids:
        try:
            await calls.send(job, calls.req("DELETE", f"/items/{item_id}"), "update")
        except RecordRefused as exc:
            if exc.status != 404:
                raise


def update_begun(job: Job, invoice_id: str) -> bool:
    return job.progress.get(UPDATING) == invoice_id
