"""anny Admin API (``$ANNY_BASE_URL/api/v1``), seed 001 and API-NOTES §2: a multi-step workflow.

One record becomes, every call with ``?o={organization}`` and the Bearer token, writes as
``application/vnd.api+json`` JSON:API resource documents (the wire contract is written out in
``bulk/sandbox/anny.py``)::

    GET /customers?filter[email]&include=address -> [POST /customers -> POST /addresses]
    POST /invoices (draft, number = external id) -> POST /items x n -> GET (verify) -> [send] -> [set-paid]

Exactly once, without an idempotency key: every create whose answer may be lost is looked up
before it is sent again, and a resumed record verifies what its resume state says.

Within a run too, a create whose answer was lost is looked up only ``settle`` seconds after
the failure (step 1's contract: it may still be on its way), then found or sent again.

- customer: one lookup-or-create per distinct e-mail (``job.resolve``: single flight, cached,
  kept in the resume file); the e-mail lookup also finds a create whose answer was lost, and
  an address missing after a crash is added then.
- invoice: ``number`` = the external id, unique per organization; a 422 on it, or an earlier
  run that may have sent the record, means: find it with ``filter[number]`` and continue with
  it, after checking it is ours (currency, price mode, customer); else the record fails.
- items: matched to lines by (title, subtitle, quantity, tax rate, unit amount) with
  multiplicity, from a read of the invoice's items (``include=items``) whenever the invoice
  was not created by this very call. Lines with the same key are created one after another,
  so a recovering read can tell "mine" from "a twin's" by counting.
- send / set-paid: the invoice's status says whether they happened. After an answer that may
  be lost the status is read before anything is sent again (already ``sent``/``paid``: the
  step is done); a refusal (422: "Only a draft invoice can be sent", "invoice not in SENT
  status") is read back the same way, since it means the step may have been done by a
  request we gave up on. Set-paid uses the seed's ``POST ...?sendNotification=`` form: a
  POST is never re-sent by the HTTP library on its own (aiohttp silently repeats an
  idempotent method, such as the seed's ``PUT`` form, once when a kept-alive connection drops
  before the answer: the blind repeat of a set-paid that had succeeded met "not in SENT
  status"). The sandbox accepts both forms.

Requests of a killed run that arrive late. A SIGKILL leaves requests on their way (in socket
buffers, a proxy, the API's queue); one of them may reach anny after the resumed run has
read the invoice. anny documents no way to remove an item (seed 001 and API-NOTES list no
item delete or update; an invoice that is not a draft is ``locked``), so an extra item can
be avoided or detected, never undone. Hence, in this order:

1. *Wait out the in-flight window*: a record an earlier run may have sent
   (``job.maybe_sent_before`` or resume state) is not looked at before ``settle`` seconds
   (``--option settle``, default 2) have passed since this run's first answer from anny
   (every request of the earlier run was sent before that answer). Only the first seconds of
   a resumed run pay for it. A request delayed longer than ``settle`` is the case left, and
   the next two steps make sure it never yields a wrong invoice counted as created.
2. *Verify the draft right before it is sent* (and before a draft record is reported): one
   read; its items must be exactly the record's lines as a multiset. Extra items -> the
   record fails (``stage=item``), the draft unsent; with ``--on-existing update`` they are
   deleted first, as the update deletes items, and the draft read again (``_anny_items``).
3. *Check the transition's answer*: ``send`` and ``set-paid`` answer the invoice with its
   item ids; an id that was not in the verified set means an item landed between the check
   and the send. The invoice is then sent and wrong: the record fails with that reason and
   is never counted as created. After ``send`` anny refuses items (only a draft takes them),
   so a create landing later changes nothing.

A draft record's invoice stays open to a request delayed beyond the run's end; nothing a
client can do bounds that (raise ``settle`` for an API or network that slow).

Item order: anny has no position field; an invoice lists items in creation order. With
``--item-concurrency 1`` the lines are created one by one in source order (n round trips per
invoice); with N > 1 up to N lines of an invoice are created at once (about n/N round trips)
and may land in any order. Totals do not depend on the order.

Set paid: ``{"send_notification"}`` / ``sendNotification`` is false unless ``--option
paid_notification=true`` (mails the payment confirmation).

Pacing: anny's defaults per organization (100 writes and 400 reads per 60 s; options
``writes_per_minute``, ``reads_per_minute``) and at most ``identical_per_second`` (4) identical
requests per second: twin item POSTs are spaced by :class:`IdenticalSpacer` (the engine's
:class:`~bulk.spacing.KeySpacer`, configured) instead of meeting a 429 (which pauses every worker).

Where the parts live: this module is the adapter (options, errors, the workflow of one record);
``_anny_wire`` the JSON:API documents and the item matching, ``_anny_calls`` the run's
requests (made in :meth:`AnnyTarget.start_run`: spacing, the settle clock, look-ups),
``_anny_customer`` the customer step, ``_anny_items`` the item, check, send and set-paid steps,
``anny_existing`` ``--on-existing``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError, InvalidRecord, RecordRefused, UnknownReference
from ..records import Record
from ..transport import Reply
from ._anny_calls import Calls, IdenticalSpacer
from ._anny_customer import ensure_customer
from ._anny_items import add_items, transition, unchanged, verified
from ._anny_wire import API, JSONAPI, Invoice, exact, invoice_attributes, item_key, line_key, match_items, resource
from .anny_existing import settle_invoice, update_begun
from .base import Created, Job, RunJob, Target

__all__ = ["AnnyTarget", "IdenticalSpacer", "item_key", "line_key", "match_items"]


class _NumberTaken(RecordRefused):
    """422 on ``POST /invoices`` naming ``/data/attributes/number``."""


def _per_minute(options: Mapping[str, Any], name: str, default: float) -> float:
    try:
        value = float(options.get(name, default))
    except (TypeError, ValueError):
        value = -1
    if not value > 0:
        raise ConfigError(f"--option {name}={options.get(name)!r}: give a number of requests per minute > 0")
    return value / 60


class AnnyTarget(Target):
    name = "anny"
    credential_env = ("ANNY_API_TOKEN",)
    base_url_env = "ANNY_BASE_URL"
    # A-rate: Admin API, per organization, 400 reads and 100 writes per 60 s (adjustable).
    default_limits: Mapping[str, float] = {"write": 100 / 60, "read": 400 / 60}
    path_prefix = API
    optional_env = ("ANNY_ORGANIZATION",)
    option_keys = ("organization", "writes_per_minute", "reads_per_minute", "identical_per_second",
                   "paid_notification", "settle")
    # Customers are found by e-mail or created, as before. An anny "item" is an invoice's line
    # (POST /items per line, made with the invoice), not a catalogue entry a line references.
    creatable = default_create = frozenset({"customers"})
    cannot_create_why = "an anny item is the invoice's own line, made with it; lines reference no catalogue"
    auth_hint = ("check ANNY_API_TOKEN (an Admin API token with customer and invoice abilities) and that "
                 "it belongs to the organization given by --option organization or ANNY_ORGANIZATION")

    def __init__(self, *, base_url: str, credentials: Mapping[str, str], options: Mapping[str, Any]) -> None:
        super().__init__(base_url=base_url, credentials=credentials, options=options)
        self.organization = str(options.get("organization") or credentials.get("ANNY_ORGANIZATION") or "")
        if base_url and not self.organization:
            raise ConfigError("the anny target needs the organization id: --option organization=ID "
                              "or ANNY_ORGANIZATION in the environment")
        # Per instance: an organization's limits may have been raised (A-rate: "adjustable").
        self.default_limits = {"write": _per_minute(options, "writes_per_minute", 100),
                               "read": _per_minute(options, "reads_per_minute", 400)}
        try:
            self.identical_per_second = int(options.get("identical_per_second", 4))
        except ValueError:
            raise ConfigError("--option identical_per_second: give a whole number (0 = no spacing)") from None
        self.paid_notification = str(options.get("paid_notification", "false")).lower() in ("true", "1", "yes")
        try:
            self.settle = float(options.get("settle", 2))
        except (TypeError, ValueError):
            self.settle = -1.0
        if not 0 <= self.settle <= 3600:
            raise ConfigError("--option settle: give the seconds a request of a killed run may still take "
                              "to reach anny, between 0 and 3600 (default 2)")

    def start_run(self) -> None:
        super().start_run()
        #: the run's calls: identical-request spacing, the settle clock (bulk.targets._anny_calls)
        self.calls = Calls(self.organization, self.identical_per_second, self.settle)

    def writes_per_invoice(self) -> float:
        return 2.0  # the draft invoice and at least one item (send and set-paid add more)

    @classmethod
    def credentials_from_env(cls, env: Mapping[str, str]) -> dict[str, str]:
        creds = super().credentials_from_env(env)
        if env.get("ANNY_ORGANIZATION"):
            creds["ANNY_ORGANIZATION"] = env["ANNY_ORGANIZATION"]
        return creds

    def secrets(self) -> list[str]:
        return [self.credentials.get("ANNY_API_TOKEN", "")]

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.credentials['ANNY_API_TOKEN']}", "Accept": JSONAPI}

    def error_message(self, reply: Reply) -> str:
        data = reply.json()
        errors = data.get("errors") if isinstance(data, dict) else None
        if not isinstance(errors, list) or not errors:
            return super().error_message(reply)
        parts = []
        for error in errors[:5]:
            if isinstance(error, dict):
                source = error.get("source")
                where = (source.get("pointer") or source.get("parameter")) if isinstance(source, dict) else None
                text = str(error.get("detail") or error.get("title") or "")
                parts.append(f"{where}: {text}" if where else text)
        return "; ".join(parts) or f"HTTP {reply.status}"

    def error_detail(self, reply: Reply) -> tuple[str, str]:
        # JSON:API errors: the field is each error's source (a pointer or a query parameter).
        data = reply.json()
        errors = data.get("errors") if isinstance(data, dict) else None
        fields = []
        for error in errors[:5] if isinstance(errors, list) else ():
            source = error.get("source") if isinstance(error, dict) else None
            where = (source.get("pointer") or source.get("parameter")) if isinstance(source, dict) else None
            if where and str(where) not in fields:
                fields.append(str(where))
        return ", ".join(fields), self.error_message(reply)

    def classify(self, reply: Reply, stage: str) -> Reply:
        if reply.status == 422 and stage == "invoice" and b'"/data/attributes/number"' in reply.content:
            raise _NumberTaken(422, self.error_message(reply), stage=stage)
        if reply.status == 422 and stage == "invoice" and b'"/data/relationships/customer"' in reply.content:
            field, message = self.error_detail(reply)  # the customer we resolved is gone
            raise UnknownReference(422, message, stage=stage, field=field)
        return super().classify(reply, stage)

    def check(self, record: Record) -> None:
        for i, line in enumerate(record.lines):
            if line.quantity != line.quantity.to_integral_value():
                raise InvalidRecord(record.line_no, f"lines[{i}].quantity",
                                    f"is {line.quantity}, but anny takes whole quantities only",
                                    "use a whole number, or quantity 1 with the line total as unit_price")
            if line.description is not None and len(line.description) > 185:
                raise InvalidRecord(record.line_no, f"lines[{i}].description",
                                    f"is {len(line.description)} characters long, more than the 185 of "
                                    "an anny item subtitle", "shorten it to at most 185 characters")

    def affinity(self, record: Record) -> str:
        return record.customer.email.lower()  # customers are found (and resolved) by e-mail

    async def prepare(self, job: RunJob) -> None:
        if not self.organization:
            raise ConfigError("the anny target needs the organization id: --option organization=ID")
        # A read as smoke test: a bad token or organization stops the run before any write.
        await self.calls.send(job, self.calls.req("GET", "/invoices", [("page[size]", "1")]), stage="auth")

    # --- the workflow ----------------------------------------------------------------------

    async def upload(self, record: Record, job: Job) -> Created:
        if job.maybe_sent_before or job.progress:
            await self.calls.settled(job)
        email = record.customer.email
        ns = f"anny.customer:{self.organization}"
        customer_id = await job.resolve(ns, email.lower(), lambda: ensure_customer(self.calls, record, job))
        p = job.progress
        invoice: Invoice | None = None
        if p.get("invoice"):
            invoice = await self.calls.get_invoice(job, p["invoice"])
        if invoice is None and (job.maybe_sent_before or p):
            invoice = await self.calls.find_invoice(job, record.external_id)
        existed, fresh = invoice is not None, False
        if invoice is None:
            body = resource("invoices", invoice_attributes(record), customer=("customers", customer_id))
            try:
                reply, invoice = await self.calls.create(
                    job, self.calls.req("POST", "/invoices", body=body), "invoice",
                    lambda: self.calls.find_invoice(job, record.external_id))
            except _NumberTaken:  # made by an earlier job, or by a run whose answer was lost
                invoice, reply, existed = await self.calls.find_invoice(job, record.external_id), None, True
                if invoice is None:
                    raise
            except UnknownReference as exc:
                exc.refs = ((ns, email.lower()),)  # the engine resolves the customer again
                raise
            if reply is not None:
                invoice, fresh = Invoice.parse(exact(reply)["data"]), True
        assert invoice is not None
        if not fresh:
            self._check_ours(record, customer_id, invoice)
            # --on-existing (bulk.targets.anny_existing). An invoice without items is never an
            # earlier job's finished one: it is this job's create, unfinished.
            ours = bool(job.maybe_sent_before or p.get("invoice")) or not invoice.known_ids()
            if update_begun(job, invoice.id) or not ours or self.on_existing == "update":
                found = invoice
                done, strangers = match_items([line_key(line) for line in record.lines], found.items)
                action, invoice = await settle_invoice(
                    self, job, record, found, invoice_attributes(record), ours=ours, strangers=strangers,
                    missing=len(record.lines) - len(done), reread=lambda: self.calls.get_invoice(job, found.id))
                if action != "updated" and not ours:  # left as it is
                    return Created(invoice_id=invoice.id, customer_id=customer_id, status=invoice.status,
                                   reported_gross=invoice.total, existed=True, action=action)
                if action == "updated":
                    p["action"] = "updated"
        p["invoice"] = invoice.id
        await add_items(self.calls, record, job, invoice)
        if invoice.status == "draft":  # step 2: what is sent (or reported) is exactly the record
            invoice = await verified(self.calls, record, job, invoice.id, remove=self.on_existing == "update")
        items = invoice.known_ids()
        wanted = record.status
        if wanted in ("sent", "paid") and invoice.status == "draft":
            invoice = await unchanged(self.calls, record, job, items, await transition(
                self.calls, job, invoice, "send", ("sent", "paid"), notify=self.paid_notification))
            p["sent"] = True
        if wanted == "paid" and invoice.status == "sent":
            invoice = await unchanged(self.calls, record, job, items, await transition(
                self.calls, job, invoice, "set-paid", ("paid",), notify=self.paid_notification))
            p["paid"] = True
        return Created(invoice_id=invoice.id, customer_id=customer_id, status=invoice.status,
                       reported_gross=invoice.total, existed=existed, action=p.get("action"))

    def _check_ours(self, record: Record, customer_id: str, invoice: Invoice) -> None:
        """An invoice found by number must be this record's, never someone else's to change."""
        differ = [what for what, same in (
            ("currency", invoice.currency == record.currency),
            ("calculate_from_net", invoice.from_net == (record.prices == "net")),
            ("customer", invoice.customer_id in (None, customer_id))) if not same]
        if differ:
            raise RecordRefused(422, f"an invoice numbered {record.external_id!r} already exists at anny "
                                f"({invoice.id}) with another {', '.join(differ)}; it was not changed",
                                stage="invoice")
