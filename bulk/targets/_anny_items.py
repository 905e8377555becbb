"""anny: the steps after the draft invoice exists: its items, the check, send and set-paid.

Steps 2 and 3 of the late-request defence (module docstring of ``bulk.targets.anny``) live
here: :func:`verified` reads the draft right before it is sent or reported (its items must be
exactly the record's lines as a multiset), and :func:`unchanged` checks that a transition's
answer lists only the verified items. :func:`add_items` creates the lines anny does not have
yet (twins one after another, so a recovering read can count them), :func:`transition` sends
or sets paid, reading the status back after a lost answer or a refusal.
"""

from __future__ import annotations

from collections import defaultdict

import anyio

from ..errors import AbortRun, BulkError, RecordError, RecordRefused
from ..records import Record
from ._anny_calls import Calls
from ._anny_wire import Invoice, ItemKey, exact, item_attributes, line_key, match_items, resource
from .anny_existing import remove_items
from .base import Job

__all__ = ["add_items", "transition", "unchanged", "verified"]

_REMOVALS = 3  # rounds of deleting late items before a draft counts as not settling


async def verified(calls: Calls, record: Record, job: Job, invoice_id: str, *, remove: bool = False) -> Invoice:
    """Step 2: a fresh read of the invoice, whose items must be exactly the record's lines.

    ``remove`` (``--on-existing update``, whose update deletes items already): an item beyond
    the lines (a killed run's request delivered late) is deleted and the draft read again, up
    to :data:`_REMOVALS` times (a dead run has only so many requests on their way); else, or
    when items keep landing, the record fails and the draft stays as it is."""
    keys = [line_key(line) for line in record.lines]
    invoice = await _read(calls, record, job, invoice_id)
    done, strangers = match_items(keys, invoice.items)
    for _ in range(_REMOVALS if remove else 0):
        if not strangers:
            break
        await remove_items(calls, job, strangers)
        invoice = await _read(calls, record, job, invoice_id)
        done, strangers = match_items(keys, invoice.items)
    if strangers:
        raise RecordError(
            f"invoice {record.external_id!r} at anny ({invoice.id}) has {len(strangers)} item(s) beyond the "
            "record's lines, added after bulk had read it (a request of an earlier, killed run delivered "
            "late); anny has no way to remove an item, so it was left an unsent draft and not counted: "
            "delete the extra item in anny, then feed the record again", stage="item")
    if len(done) != len(record.lines) or len(invoice.items) != len(invoice.item_ids or invoice.items):
        raise RecordError(f"invoice {record.external_id!r} at anny ({invoice.id}) holds {len(done)} of the "
                          f"record's {len(record.lines)} lines after they were created", stage="item")
    return invoice


async def _read(calls: Calls, record: Record, job: Job, invoice_id: str) -> Invoice:
    invoice = await calls.get_invoice(job, invoice_id)
    if invoice is None:
        raise RecordError(f"invoice {record.external_id!r} ({invoice_id}) is gone from anny", stage="item")
    return invoice


async def unchanged(calls: Calls, record: Record, job: Job, verified: frozenset[str], invoice: Invoice) -> Invoice:
    """Step 3: the invoice a transition answered has exactly the verified items (read back
    when the answer does not list them)."""
    now = invoice if invoice.item_ids is not None else await calls.get_invoice(job, invoice.id) or invoice
    if now.known_ids() == verified:
        return invoice
    raise RecordError(
        f"invoice {record.external_id!r} at anny ({invoice.id}) is {invoice.status} with "
        f"{len(now.known_ids() - verified)} item(s) beyond the record's lines, added between bulk's check "
        "and the send (a request of an earlier, killed run delivered late); it is wrong at anny and was "
        "not counted: cancel it in anny (a credit note voids it)", stage="item")


async def add_items(calls: Calls, record: Record, job: Job, invoice: Invoice) -> bool:
    """Create the lines anny does not have yet; True if any was created."""
    keys = [line_key(line) for line in record.lines]
    done, strangers = match_items(keys, invoice.items)
    if strangers:
        raise RecordError(f"invoice {record.external_id!r} at anny ({invoice.id}) has {len(strangers)} "
                          "item(s) that match no line of this record; it was not changed", stage="item")
    missing = [i for i in range(len(keys)) if i not in done]
    job.progress["items"] = sorted(done)
    if missing and invoice.status != "draft":
        raise RecordError(f"invoice {record.external_id!r} at anny is {invoice.status} with "
                          f"{len(done)} of {len(keys)} items; items can only be added to a draft",
                          stage="item")
    claimed = set(done.values())

    async def one(i: int) -> None:
        req = calls.req("POST", "/items", [("calculate_from_net", "true" if invoice.from_net else "false")],
                        resource("items", item_attributes(record.lines[i], invoice.from_net),
                                 document=("invoices", invoice.id)))

        async def find() -> str | None:  # twins are never in flight together: counting is exact
            now = await calls.get_invoice(job, invoice.id)
            return next((item_id for item_id, key in (now.items if now else ())
                         if key == keys[i] and item_id not in claimed), None)

        reply, item_id = await calls.create(job, req, "item", find)
        item_id = str(exact(reply)["data"]["id"]) if reply is not None else item_id
        assert item_id is not None
        claimed.add(item_id)
        job.progress["items"].append(i)

    if job.item_concurrency <= 1:
        for i in missing:
            await one(i)
        return bool(missing)
    twins: dict[ItemKey, list[int]] = defaultdict(list)
    for i in missing:
        twins[keys[i]].append(i)
    limiter, errors = anyio.CapacityLimiter(job.item_concurrency), list[BulkError]()

    async def chain(indexes: list[int]) -> None:
        try:
            for i in indexes:
                async with limiter:
                    await one(i)
        except BulkError as exc:
            errors.append(exc)
            tg.cancel_scope.cancel()

    async with anyio.create_task_group() as tg:
        for indexes in twins.values():
            tg.start_soon(chain, indexes)
    if errors:  # a run-stopping error wins over a record error
        raise next((e for e in errors if isinstance(e, AbortRun)), errors[0])
    return True


async def transition(calls: Calls, job: Job, invoice: Invoice, action: str, after: tuple[str, ...], *,
                     notify: bool) -> Invoice:
    """``send`` or ``set-paid`` (``notify``: mail the payment confirmation). Done already is
    done: after an answer that may be lost, and after a refusal, the invoice's status says
    whether the step happened."""
    if action == "send":
        req = calls.req("POST", f"/invoices/{invoice.id}/send")
    else:  # POST, never PUT: see the module docstring of bulk.targets.anny
        req = calls.req("POST", f"/invoices/{invoice.id}/set-paid",
                        [("sendNotification", "true" if notify else "false")])

    async def find() -> Invoice | None:
        now = await calls.get_invoice(job, invoice.id)
        return now if now is not None and now.status in after else None

    try:
        reply, found = await calls.create(job, req, action, find)
    except RecordRefused:
        # e.g. 422 "invoice not in SENT status": a request we gave up on (this run's, or a
        # killed run's arriving late) may have done the step already.
        found = await find()
        if found is None:
            raise
        return found
    if reply is not None:
        return Invoice.parse(exact(reply)["data"])
    assert found is not None  # create() returns the reply or what find() found
    return found
