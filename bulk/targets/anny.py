"""anny Admin API (``$ANNY_BASE_URL/api/v1``), seed 001 and API-NOTES §2: a multi-step workflow.

One record becomes, every call with ``?o={organization}`` and the Bearer token, writes as
``application/vnd.api+json`` JSON:API resource documents (the wire contract is written out in
``bulk/sandbox/anny.py``)::

    GET /customers?filter[email]&include=address -> [POST /customers -> POST /addresses]
    POST /invoices (draft, number = external id) -> POST /items x n -> GET (verify) -> [send] -> [set-paid]

Exactly once, without an idempotency key: every create whose answer may be lost is looked up
before it is sent again, and a resumed record verifies what its resume state says.

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
   record fails (``stage=item``) and the invoice stays an unsent draft, to be fixed in anny.
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
requests per second: twin item POSTs are spaced by :class:`IdenticalSpacer` instead of
meeting a 429 (which pauses every worker).
"""

from __future__ import annotations

import json
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from dataclasses import field as _field
from decimal import Decimal
from typing import Any, TypeVar

import anyio

from ..errors import AbortRun, BulkError, ConfigError, InvalidRecord, RecordError, RecordRefused, UnknownReference
from ..records import Line, Record
from ..refs import begin_create, record_created
from ..refs import found as refs_found
from ..spacing import KeySpacer
from ..transport import Reply, Request
from .anny_existing import settle_invoice, update_begun
from .base import Created, Job, RunJob, Target

__all__ = ["AnnyTarget", "IdenticalSpacer", "item_key", "line_key", "match_items"]

API = "/api/v1"
JSONAPI = "application/vnd.api+json"
ItemKey = tuple[str, str | None, int, Decimal, Decimal]
T = TypeVar("T")
_FOUND = Reply(200, {}, b"")  # what a recover() returns when the lookup found the object


class _NumberTaken(RecordRefused):
    """422 on ``POST /invoices`` naming ``/data/attributes/number``."""


def line_key(line: Line) -> ItemKey:
    return (line.title, line.description, int(line.quantity), line.tax_rate, line.unit_price)


def item_key(attrs: Mapping[str, Any], from_net: bool) -> ItemKey:
    """The key of an item as anny answers it (amounts parsed exactly)."""
    amount = attrs.get("single_net_amount" if from_net else "single_gross_amount")
    return (attrs.get("title") or "", attrs.get("subtitle") or None, int(attrs.get("quantity") or 0),
            _decimal(attrs.get("tax_rate")), _decimal(amount))


def match_items(lines: list[ItemKey], items: list[tuple[str, ItemKey]]) -> tuple[dict[int, str], list[str]]:
    """Assign items to lines with multiplicity, in order: ``({line index: item id}, unmatched ids)``."""
    pool: dict[ItemKey, deque[str]] = defaultdict(deque)
    for item_id, key in items:
        pool[key].append(item_id)
    done = {i: pool[key].popleft() for i, key in enumerate(lines) if pool.get(key)}
    return done, [item_id for ids in pool.values() for item_id in ids]


def _decimal(value: Any) -> Decimal:
    return value if isinstance(value, Decimal) else Decimal(str(value if value is not None else "NaN"))


def _exact(reply: Reply) -> Any:
    """The answer with every fractional number as a Decimal (orjson would give floats)."""
    return json.loads(reply.content, parse_float=Decimal)


@dataclass(slots=True)
class _Invoice:
    id: str
    number: str
    status: str
    currency: str
    from_net: bool
    customer_id: str | None
    total: Decimal | None
    items: list[tuple[str, ItemKey]]  # the items the answer included, with their keys
    item_ids: frozenset[str] | None  # every item the invoice has (its relationship); None: not said
    attributes: Mapping[str, Any] = _field(default_factory=dict)  # as answered (bulk.targets.anny_existing)

    def known_ids(self) -> frozenset[str]:
        """The invoice's item ids: its relationship, else the items the answer included."""
        return self.item_ids if self.item_ids is not None else frozenset(i for i, _ in self.items)

    @classmethod
    def parse(cls, data: Mapping[str, Any], included: list[Any] | None = None) -> _Invoice:
        a, rels = data.get("attributes") or {}, data.get("relationships") or {}
        from_net = bool(a.get("calculate_from_net"))
        refs = (rels.get("items") or {}).get("data")
        ids = [ref.get("id") for ref in refs or []]
        by_id = {r.get("id"): r for r in included or [] if r.get("type") == "items"}
        customer = (rels.get("customer") or {}).get("data") or {}
        total = a.get("total")
        return cls(str(data["id"]), str(a.get("number")), str(a.get("status", "")).lower(),
                   str(a.get("currency")), from_net, customer.get("id"),
                   None if total is None else _decimal(total),
                   [(i, item_key(by_id[i].get("attributes") or {}, from_net)) for i in ids if i in by_id],
                   None if refs is None else frozenset(str(i) for i in ids), a)


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


def _customer_attributes(record: Record) -> dict[str, Any]:
    c = record.customer
    given, _, family = (c.name or "").partition(" ")
    return {"email": c.email, "locale": c.locale, "given_name": given or None,
            "family_name": family or None, "company": c.company}


def _address_attributes(record: Record) -> dict[str, Any]:
    c = record.customer
    a = c.address
    assert a is not None
    return {"name": c.name or c.company, "street_address": a.line1, "address_line_2": a.line2,
            "zip_code": a.postal_code, "city": a.city, "area": a.region, "country_code": a.country}


def _recipient(record: Record) -> str | None:
    """The free-text address block anny prints (it fills a blank one from the customer on send)."""
    c, a = record.customer, record.customer.address
    parts = [c.company, c.name]
    if a is not None:
        city = " ".join(p for p in (a.postal_code, a.city) if p)
        parts += [a.line1, a.line2, city, a.region, a.country]
    return "\n".join(p for p in parts if p) or None


def _invoice_attributes(record: Record) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "number": record.external_id, "currency": record.currency, "recipient": _recipient(record),
        "calculate_from_net": record.prices == "net", "notes": record.notes,
        "issued_at": record.issue_date.isoformat() if record.issue_date else None,
        "due_date": record.due_date.isoformat() if record.due_date else None,
    }
    for key in ("vat_number", "invoicing_party"):  # the extras anny has a field for
        if isinstance(record.extra.get(key), str):
            attrs[key] = record.extra[key]
    return attrs


def _item_attributes(line: Line, from_net: bool) -> dict[str, Any]:
    attrs: dict[str, Any] = {"title": line.title, "quantity": int(line.quantity), "tax_rate": line.tax_rate,
                             "single_net_amount" if from_net else "single_gross_amount": line.unit_price}
    if line.description:
        attrs["subtitle"] = line.description
    return attrs


def _resource(kind: str, attributes: dict[str, Any], **relations: tuple[str, str]) -> dict[str, Any]:
    data: dict[str, Any] = {"type": kind, "attributes": attributes}
    if relations:
        data["relationships"] = {name: {"data": {"type": t, "id": i}} for name, (t, i) in relations.items()}
    return {"data": data}


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
        self.start_run()  # usable outside a run too (e.g. classify in a unit test); the engine calls it again

    def start_run(self) -> None:
        super().start_run()
        self.spacer = IdenticalSpacer(self.identical_per_second)
        self._started = time.monotonic()  # moved to this process's first answer from anny
        self._answered = False
        self._resumed = False  # a record an earlier run may have sent was seen

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
        await self._send(job, self._req("GET", "/invoices", [("page[size]", "1")]), stage="auth")

    async def _settled(self, job: Job) -> None:
        """Wait until requests an earlier run had on their way have reached anny (step 1):
        ``settle`` seconds after this process's first answer (an upload process of
        ``--processes`` never runs ``prepare``: it asks first)."""
        self._resumed = True
        if not self._answered:
            await self._send(job, self._req("GET", "/invoices", [("page[size]", "1")]), stage="settle")
        left = self._started + self.settle - time.monotonic()
        if left > 0:
            await anyio.sleep(left)

    # --- requests ------------------------------------------------------------------------

    def _req(self, method: str, path: str, params: Sequence[tuple[str, str]] = (), body: Any = None) -> Request:
        return Request(method, API + path, params=[("o", self.organization), *params], json=body,
                       kind="read" if method == "GET" else "write", content_type=JSONAPI)

    async def _send(self, job: RunJob, req: Request, stage: str,
                    recover: Callable[[], Awaitable[Reply | None]] | None = None) -> Reply:
        async with self.spacer.request_slot(req):
            reply = await job.send(req, stage=stage, recover=recover)
        if not self._answered:
            # Every request of an earlier (killed) run left before this answer came back.
            self._answered, self._started = True, time.monotonic()
        return reply

    async def _create(self, job: Job, req: Request, stage: str,
                      find: Callable[[], Awaitable[T | None]]) -> tuple[Reply | None, T | None]:
        """Send a create; after an answer that may be lost, ``find()`` looks for it first.
        Returns ``(reply, None)`` when created now, ``(None, found)`` when found."""
        found: T | None = None

        async def recover() -> Reply | None:
            nonlocal found
            found = await find()
            return _FOUND if found is not None else None

        reply = await self._send(job, req, stage, recover)
        return (None, found) if reply is _FOUND else (reply, None)

    # --- the workflow ----------------------------------------------------------------------

    async def upload(self, record: Record, job: Job) -> Created:
        if job.maybe_sent_before or job.progress:
            await self._settled(job)
        email = record.customer.email
        ns = f"anny.customer:{self.organization}"
        customer_id = await job.resolve(ns, email.lower(), lambda: self._customer(record, job))
        p = job.progress
        invoice: _Invoice | None = None
        if p.get("invoice"):
            invoice = await self._get_invoice(job, p["invoice"])
        if invoice is None and (job.maybe_sent_before or p):
            invoice = await self._find_invoice(job, record.external_id)
        existed, fresh = invoice is not None, False
        if invoice is None:
            body = _resource("invoices", _invoice_attributes(record), customer=("customers", customer_id))
            try:
                reply, invoice = await self._create(job, self._req("POST", "/invoices", body=body), "invoice",
                                                    lambda: self._find_invoice(job, record.external_id))
            except _NumberTaken:  # made by an earlier job, or by a run whose answer was lost
                invoice, reply, existed = await self._find_invoice(job, record.external_id), None, True
                if invoice is None:
                    raise
            except UnknownReference as exc:
                exc.refs = ((ns, email.lower()),)  # the engine resolves the customer again
                raise
            if reply is not None:
                invoice, fresh = _Invoice.parse(_exact(reply)["data"]), True
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
                    self, job, record, found, _invoice_attributes(record), ours=ours, strangers=strangers,
                    missing=len(record.lines) - len(done), reread=lambda: self._get_invoice(job, found.id))
                if action != "updated" and not ours:  # left as it is
                    return Created(invoice_id=invoice.id, customer_id=customer_id, status=invoice.status,
                                   reported_gross=invoice.total, existed=True, action=action)
                if action == "updated":
                    p["action"] = "updated"
        p["invoice"] = invoice.id
        await self._items(record, job, invoice)
        if invoice.status == "draft":  # step 2: what is sent (or reported) is exactly the record
            invoice = await self._verified(record, job, invoice.id)
        items = invoice.known_ids()
        wanted = record.status
        if wanted in ("sent", "paid") and invoice.status == "draft":
            invoice = await self._unchanged(record, job, items,
                                            await self._act(job, invoice, "send", ("sent", "paid")))
            p["sent"] = True
        if wanted == "paid" and invoice.status == "sent":
            invoice = await self._unchanged(record, job, items,
                                            await self._act(job, invoice, "set-paid", ("paid",)))
            p["paid"] = True
        return Created(invoice_id=invoice.id, customer_id=customer_id, status=invoice.status,
                       reported_gross=invoice.total, existed=existed, action=p.get("action"))

    def _check_ours(self, record: Record, customer_id: str, invoice: _Invoice) -> None:
        """An invoice found by number must be this record's, never someone else's to change."""
        differ = [what for what, same in (
            ("currency", invoice.currency == record.currency),
            ("calculate_from_net", invoice.from_net == (record.prices == "net")),
            ("customer", invoice.customer_id in (None, customer_id))) if not same]
        if differ:
            raise RecordRefused(422, f"an invoice numbered {record.external_id!r} already exists at anny "
                                f"({invoice.id}) with another {', '.join(differ)}; it was not changed",
                                stage="invoice")

    async def _verified(self, record: Record, job: Job, invoice_id: str) -> _Invoice:
        """Step 2: a fresh read of the invoice, whose items must be exactly the record's lines."""
        invoice = await self._get_invoice(job, invoice_id)
        if invoice is None:
            raise RecordError(f"invoice {record.external_id!r} ({invoice_id}) is gone from anny", stage="item")
        done, strangers = match_items([line_key(line) for line in record.lines], invoice.items)
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

    async def _unchanged(self, record: Record, job: Job, verified: frozenset[str], invoice: _Invoice) -> _Invoice:
        """Step 3: the invoice a transition answered has exactly the verified items (read back
        when the answer does not list them)."""
        now = invoice if invoice.item_ids is not None else await self._get_invoice(job, invoice.id) or invoice
        if now.known_ids() == verified:
            return invoice
        raise RecordError(
            f"invoice {record.external_id!r} at anny ({invoice.id}) is {invoice.status} with "
            f"{len(now.known_ids() - verified)} item(s) beyond the record's lines, added between bulk's check "
            "and the send (a request of an earlier, killed run delivered late); it is wrong at anny and was "
            "not counted: cancel it in anny (a credit note voids it)", stage="item")

    async def _items(self, record: Record, job: Job, invoice: _Invoice) -> bool:
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
            req = self._req("POST", "/items", [("calculate_from_net", "true" if invoice.from_net else "false")],
                            _resource("items", _item_attributes(record.lines[i], invoice.from_net),
                                      document=("invoices", invoice.id)))

            async def find() -> str | None:  # twins are never in flight together: counting is exact
                now = await self._get_invoice(job, invoice.id)
                return next((item_id for item_id, key in (now.items if now else ())
                             if key == keys[i] and item_id not in claimed), None)

            reply, item_id = await self._create(job, req, "item", find)
            item_id = str(_exact(reply)["data"]["id"]) if reply is not None else item_id
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

    async def _act(self, job: Job, invoice: _Invoice, action: str, after: tuple[str, ...]) -> _Invoice:
        """``send`` or ``set-paid``. Done already is done: after an answer that may be lost, and
        after a refusal, the invoice's status says whether the step happened."""
        if action == "send":
            req = self._req("POST", f"/invoices/{invoice.id}/send")
        else:  # POST, never PUT: see the module docstring
            req = self._req("POST", f"/invoices/{invoice.id}/set-paid",
                            [("sendNotification", "true" if self.paid_notification else "false")])

        async def find() -> _Invoice | None:
            now = await self._get_invoice(job, invoice.id)
            return now if now is not None and now.status in after else None

        try:
            reply, found = await self._create(job, req, action, find)
        except RecordRefused:
            # e.g. 422 "invoice not in SENT status": a request we gave up on (this run's, or a
            # killed run's arriving late) may have done the step already.
            found = await find()
            if found is None:
                raise
            return found
        return _Invoice.parse(_exact(reply)["data"]) if reply is not None else found  # type: ignore[return-value]

    # --- lookups -------------------------------------------------------------------------

    async def _get_invoice(self, job: Job, invoice_id: str) -> _Invoice | None:
        try:
            reply = await self._send(job, self._req("GET", f"/invoices/{invoice_id}", [("include", "items")]),
                                     "invoice")
        except RecordRefused as exc:
            if exc.status == 404:
                return None
            raise
        doc = _exact(reply)
        return _Invoice.parse(doc["data"], doc.get("included"))

    async def _find_invoice(self, job: Job, number: str) -> _Invoice | None:
        reply = await self._send(job, self._req("GET", "/invoices", [("filter[number]", number),
                                                                     ("include", "items")]), "invoice")
        doc = _exact(reply)
        for row in doc.get("data") or []:
            if (row.get("attributes") or {}).get("number") == number:
                return _Invoice.parse(row, doc.get("included"))
        return None

    async def _find_customer(self, job: Job, email: str) -> tuple[str, bool] | None:
        """``(customer id, has an address)`` of the first customer with this e-mail."""
        reply = await self._send(job, self._req("GET", "/customers", [("filter[email]", email),
                                                                      ("include", "address")]), "customer")
        for row in (reply.json() or {}).get("data") or []:
            if str((row.get("attributes") or {}).get("email", "")).lower() == email.lower():
                address = ((row.get("relationships") or {}).get("address") or {}).get("data")
                return str(row["id"]), bool(address)
        return None

    async def _customer(self, record: Record, job: Job) -> str:
        """Find the customer by e-mail, else create it; then its address if it has none."""
        if self._resumed:  # a killed run's create for this e-mail may still be on its way
            await self._settled(job)
        email = record.customer.email
        found = await self._find_customer(job, email)
        if found is not None:
            refs_found(job, "customer", email.lower(), found[0])  # made by a killed run of this job?
        else:
            await begin_create(job, "customer", email.lower())
            body = _resource("customers", _customer_attributes(record))
            reply, found = await self._create(job, self._req("POST", "/customers", body=body), "customer",
                                              lambda: self._find_customer(job, email))
            if reply is not None:
                found = (str(reply.json()["data"]["id"]), False)
            if found is not None:  # made now, or found after a lost answer: ours either way
                record_created(job, "customer", email.lower(), found[0])
        assert found is not None
        customer_id, has_address = found
        if record.customer.address is not None and not has_address:
            async def address_made() -> bool | None:
                again = await self._find_customer(job, email)
                return True if again is not None and again[1] else None

            body = _resource("addresses", _address_attributes(record), addressable=("customers", customer_id))
            await self._create(job, self._req("POST", "/addresses", body=body), "address", address_made)
        return customer_id
