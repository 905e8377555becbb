"""anny: the invoice's customer, found by e-mail or created once, with its address.

``ensure_customer`` is the factory the adapter hands to ``job.resolve`` (single flight per
e-mail, cached, kept in the resume file). The e-mail look-up also finds a create whose answer
was lost; an address missing after a crash is added then. A record an earlier run may have
sent waits out the settle window first (a killed run's create may still be on its way).
"""

from __future__ import annotations

from typing import Any

from ..records import Record
from ..refs import begin_create, record_created
from ..refs import found as refs_found
from ._anny_calls import Calls
from ._anny_wire import resource
from .base import Job

__all__ = ["ensure_customer", "find_customer"]


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


async def find_customer(calls: Calls, job: Job, email: str) -> tuple[str, bool] | None:
    """``(customer id, has an address)`` of the first customer with this e-mail."""
    reply = await calls.send(job, calls.req("GET", "/customers", [("filter[email]", email),
                                                                  ("include", "address")]), "customer")
    for row in (reply.json() or {}).get("data") or []:
        if str((row.get("attributes") or {}).get("email", "")).lower() == email.lower():
            address = ((row.get("relationships") or {}).get("address") or {}).get("data")
            return str(row["id"]), bool(address)
    return None


async def ensure_customer(calls: Calls, record: Record, job: Job) -> str:
    """Find the customer by e-mail, else create it; then its address if it has none."""
    if calls.resumed:  # a killed run's create for this e-mail may still be on its way
        await calls.settled(job)
    email = record.customer.email
    found = await find_customer(calls, job, email)
    if found is not None:
        refs_found(job, "customer", email.lower(), found[0])  # made by a killed run of this job?
    else:
        await begin_create(job, "customer", email.lower())
        body = resource("customers", _customer_attributes(record))
        reply, found = await calls.create(job, calls.req("POST", "/customers", body=body), "customer",
                                          lambda: find_customer(calls, job, email))
        if reply is not None:
            found = (str(reply.json()["data"]["id"]), False)
        if found is not None:  # made now, or found after a lost answer: ours either way
            record_created(job, "customer", email.lower(), found[0])
    assert found is not None
    customer_id, has_address = found
    if record.customer.address is not None and not has_address:
        async def address_made() -> bool | None:
            again = await find_customer(calls, job, email)
            return True if again is not None and again[1] else None

        body = resource("addresses", _address_attributes(record), addressable=("customers", customer_id))
        await calls.create(job, calls.req("POST", "/addresses", body=body), "address", address_made)
    return customer_id
