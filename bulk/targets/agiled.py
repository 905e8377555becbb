"""Agiled public API (``$AGILED_API_BASE_URL/public/v1``), seed 000 and API-NOTES §1.

Exactly once: every create carries an ``Idempotency-Key`` derived from the external id
(Agiled: "use an idempotency key based on the external invoice or order ID so retries do not
create duplicate invoices"), so a retry or a resumed run replays the stored answer instead of
creating again. The same key with a different body is refused with 409 (the record then fails
with that message: the invoice was already created from different data).

Agiled does not publish its invoice body; the mapping below is our documented assumption
(README, "Agiled request body"), kept in :func:`invoice_body` and :func:`contact_body` so it
is one place to adjust against a real deployment's OpenAPI reference. The create sends
:func:`invoice_json`, the same body already encoded (a test holds the two byte for byte equal).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import msgspec

from .._frozen import constructor
from ..errors import RecordError, RecordRefused, ServerError, UnknownReference
from ..records import Record
from ..refs import begin_create, record_created
from ..refs import found as refs_found
from ..transport import Reply, Request, dumps
from .agiled_existing import find_invoice, settle_invoice
from .base import Created, Job, RunJob, Target

__all__ = ["AgiledTarget", "contact_body", "idempotency_key", "invoice_body", "invoice_json"]

_SAFE_KEY = re.compile(r"[A-Za-z0-9._:-]{1,100}")
_safe_key = _SAFE_KEY.fullmatch
_new_created = constructor(Created)  # once per invoice: without the frozen __init__'s cost (bulk._frozen)


def idempotency_key(kind: str, external_id: str) -> str:
    """``invoice-INV-1001`` for a plain id (readable in Agiled's logs), else a hash of it."""
    if _safe_key(external_id):  # AgiledTarget.upload has this case inline: keep the two alike
        return f"{kind}-{external_id}"
    return f"{kind}-h{hashlib.sha256(external_id.encode()).hexdigest()[:40]}"


def contact_body(record: Record) -> dict[str, Any]:
    c = record.customer
    first, _, last = (c.name or "").partition(" ")
    a = c.address
    return {
        "email": c.email,
        "first_name": first or None,
        "last_name": last or None,
        "company": c.company,
        "locale": c.locale,
        "external_id": c.external_id,
        "address": None if a is None else {
            "line1": a.line1, "line2": a.line2, "city": a.city, "state": a.region,
            "postal_code": a.postal_code, "country": a.country,
        },
    }


def _contact_int(contact_id: str) -> int:
    """The contact id the API gave, as the integer the body carries; one the body cannot carry
    (not an integer, or outside the integers JSON encoders agree on, -2^63 .. 2^64-1) fails this
    record, naming the API's id, instead of ending the run with a foreign exception."""
    try:
        contact = int(contact_id)
    except ValueError:
        contact = None
    if contact is None or not _INT_LOW <= contact <= _INT_HIGH:
        raise RecordError(f"the API gave contact id {contact_id!r}, which is not an integer from -2^63 to "
                          "2^64-1 that Agiled's contact_id can carry: check the contact at the API",
                          stage="customer")
    return contact


def invoice_body(record: Record, contact_id: str) -> dict[str, Any]:
    issue_date, due_date = record.issue_date, record.due_date
    body: dict[str, Any] = {
        "invoice_number": record.external_id,
        "contact_id": _contact_int(contact_id),
        "currency": record.currency,
        "issue_date": issue_date.isoformat() if issue_date else None,
        "due_date": due_date.isoformat() if due_date else None,
        "status": record.status,
        "tax_inclusive": record.prices == "gross",
        "notes": record.notes,
        "items": [
            {
                "name": line.title,
                "description": line.description,
                "quantity": str(line.quantity),
                "unit_price": str(line.unit_price),
                "tax_rate": str(line.tax_rate),
                "sku": line.item_ref,
            }
            for line in record.lines
        ],
    }
    if extra := record.extra:
        for key, value in extra.items():
            body.setdefault(key, value)  # target-specific pass-through; never overrides the mapping
    return body


# invoice_json's layout of invoice_body: the same keys in the same order (msgspec encodes a
# Struct's fields in declaration order, a Decimal as its str() text, a date as isoformat()).
class _Item(msgspec.Struct, gc=False):
    name: Any
    description: Any
    quantity: Any
    unit_price: Any
    tax_rate: Any
    sku: Any


class _Invoice(msgspec.Struct, gc=False):
    invoice_number: Any
    contact_id: Any
    currency: Any
    issue_date: Any
    due_date: Any
    status: Any
    tax_inclusive: Any
    notes: Any
    items: Any


_encode = msgspec.json.Encoder().encode
_MAPPED = frozenset(_Invoice.__struct_fields__)  # the keys record.extra never overrides
_INT_LOW, _INT_HIGH = -(2**63), 2**64 - 1  # the integers orjson encodes (dumps raises TypeError beyond)
#: contact id -> the integer _contact_int made of it (only ones it accepted), for invoice_json
_CONTACT_INTS: dict[str, int] = {}
_CONTACTS_KEPT = 4096  # bounded: a run of many contacts converts the rest each time, as before


def invoice_json(record: Record, contact_id: str) -> bytes:
    """``bulk.transport.dumps(invoice_body(record, contact_id))``, byte for byte, for less work.

    Once per invoice: msgspec encodes the mapping in one C pass (the amounts' and dates' text
    included), where the dict path built a dict per line, called ``str()`` on nine amounts
    and ``isoformat()`` on two dates in Python, then had orjson encode it all (callgrind:
    ~12,000 instructions an invoice less). Both write compact JSON with the same string
    escapes (tests/test_upload_agiled.py compares them on every code point). ``record.extra``'s
    keys the mapping does not have follow its own, encoded by ``dumps`` as before. A contact id
    outside orjson's integers (-2^63 .. 2^64-1), which msgspec would encode, is refused as
    :func:`invoice_body` refuses it (:func:`_contact_int`)."""
    if (contact := _CONTACT_INTS.get(contact_id)) is None:  # a contact's invoices after its first: a dict hit
        contact = _contact_int(contact_id)
        if len(_CONTACT_INTS) < _CONTACTS_KEPT:
            _CONTACT_INTS[contact_id] = contact
    main = _encode(_Invoice(
        record.external_id, contact, record.currency, record.issue_date, record.due_date, record.status,
        record.prices == "gross", record.notes,
        [_Item(ln.title, ln.description, ln.quantity, ln.unit_price, ln.tax_rate, ln.item_ref) for ln in record.lines],
    ))
    if extra := record.extra:
        rest = {key: value for key, value in extra.items() if key not in _MAPPED}
        if rest:
            return main[:-1] + b"," + dumps(rest)[1:]  # the two objects' members as one object
    return main


_new_object = object.__new__


class AgiledTarget(Target):
    # Contacts are created (POST /contacts) as before; invoice lines are free text (no catalogue
    # to reference), so --create-missing items is refused (exit 2) rather than ignored.
    name = "agiled"
    credential_env = ("AGILED_API_TOKEN",)
    base_url_env = "AGILED_API_BASE_URL"
    # G-err: per token and action, writes 30/min, reads 60/min.
    default_limits: Mapping[str, float] = {"write": 30 / 60, "read": 60 / 60}
    path_prefix = "/public/v1"
    auth_hint = "check AGILED_API_TOKEN: it must be valid and have contact and invoice write ability"
    creatable = default_create = frozenset({"customers"})
    cannot_create_why = "its invoice lines are free text: there is no item catalogue to reference"

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.credentials['AGILED_API_TOKEN']}", "Accept": "application/json"}

    def classify(self, reply: Reply, stage: str) -> Reply:
        if 200 <= reply.status < 300:
            return reply  # the common case, without the checks below and super()'s call
        # 409 "already in progress": our own earlier attempt with this Idempotency-Key (one whose
        # answer timed out) is still being handled. Not a refusal: retry later with the same key,
        # which then replays that attempt's answer. (409 "different request" stays a refusal.)
        if reply.status == 409 and "in progress" in self.error_message(reply).lower():
            raise ServerError(409, self.error_message(reply))
        # Laravel's ``exists`` rule: "The selected contact id is invalid." names a contact the
        # API does not know (deleted since we resolved it): the engine resolves it again.
        if reply.status == 422:
            data = reply.json()
            errors = data.get("errors") if isinstance(data, dict) else None
            if isinstance(errors, dict) and "selected" in str(errors.get("contact_id", "")).lower():
                field, message = self.error_detail(reply)
                raise UnknownReference(422, message, stage=stage, field=field)
        return super().classify(reply, stage)

    async def prepare(self, job: RunJob) -> None:
        # G-auth: the smoke test, so a bad token stops the run before any write.
        await job.send(Request("GET", "/public/v1/me", kind="read"), stage="auth")

    async def upload(self, record: Record, job: Job) -> Created:
        customer = record.customer
        contact_id = job.cached("agiled.contact", customer.external_id)  # the common case: no coroutine
        if contact_id is None:
            contact_id = await job.resolve("agiled.contact", customer.external_id, lambda: self._contact(record, job))
        if self.on_existing != "skip":  # bulk.targets.agiled_existing: look first, so an identical one is found
            stored = await find_invoice(job, record.external_id)
            if stored is not None:
                return await self._existing(job, stored, invoice_body(record, contact_id), contact_id)
        # The create, ``Request("POST", "/public/v1/invoices", None, None, headers, "write",
        # "application/json", body)`` built in place, once per invoice (no class call, no helper's
        # call): already encoded (``json`` None: invoice_json's bytes are the body), Content-Type
        # given here (the transport would merge it into a new dict per request), and
        # idempotency_key("invoice", ext) with its common case inline.
        ext = record.external_id
        req = _new_object(Request)
        req.method, req.path, req.params, req.json, req.kind = "POST", "/public/v1/invoices", None, None, "write"
        req.headers = {"Idempotency-Key": "invoice-" + ext if _safe_key(ext) else idempotency_key("invoice", ext),
                       "Content-Type": "application/json"}
        req.content_type, req._body = "application/json", invoice_json(record, contact_id)
        try:
            reply = await job.send(req, stage="invoice", refs=(("agiled.contact", customer.external_id),))
        except RecordRefused as exc:
            # 409: the key was used with another body; 422: the number is taken (a key expired):
            # the invoice exists, made from other data.
            if not (exc.status == 409 or (exc.status == 422 and "invoice_number" in exc.field)):
                raise
            stored = await find_invoice(job, record.external_id)
            if stored is None:
                raise
            return await self._existing(job, stored, invoice_body(record, contact_id), contact_id)
        data = reply.json()["data"]
        total = data.get("total")
        return _new_created(str(data["id"]), contact_id, data.get("status"),
                            Decimal(str(total)) if total is not None else None, False, None)

    async def _existing(self, job: Job, stored: dict[str, Any], body: dict[str, Any], contact_id: str) -> Created:
        action, now = await settle_invoice(self, job, stored, body, ours=job.maybe_sent_before)
        total = now.get("total")
        return Created(invoice_id=str(now["id"]), customer_id=contact_id, status=now.get("status"),
                       reported_gross=Decimal(str(total)) if total is not None else None, existed=True,
                       action=action)

    @staticmethod
    def _contact_key(record: Record, job: Job) -> str:
        ext = record.customer.external_id
        stale = job.stale("agiled.contact", ext)
        # The contact made under the plain key was deleted: that key would replay its answer.
        return idempotency_key("contact", ext if stale is None else f"{ext}~after-{stale}")

    async def _contact(self, record: Record, job: Job) -> str:
        """Find the contact by email; create it (idempotently) when there is none."""
        email = record.customer.email
        found = await job.send(
            Request("GET", "/public/v1/contacts", params={"email": email}, kind="read"), stage="customer"
        )
        rows = found.json().get("data") or []
        if rows:
            refs_found(job, "customer", record.customer.external_id, str(rows[0]["id"]))  # a killed run's?
            return str(rows[0]["id"])
        await begin_create(job, "customer", record.customer.external_id)
        made = await job.send(
            Request(
                "POST", "/public/v1/contacts", json=contact_body(record),
                headers={"Idempotency-Key": self._contact_key(record, job)},
            ),
            stage="customer",
        )
        contact_id = str(made.json()["data"]["id"])
        # A replayed answer (the key's first create, by an earlier run) is this job's creation too.
        record_created(job, "customer", record.customer.external_id, contact_id)
        return contact_id
