"""anny's customer and address routes (``GET/POST /customers``, ``GET /customers/{id}``,
``POST /addresses``): :data:`~bulk.sandbox._anny_org.Handler` functions."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from bulk.sandbox._anny_bodies import address_fields, customer_fields
from bulk.sandbox._anny_org import Api, Org, now
from bulk.sandbox._anny_resources import address_res, customer_res, includes, list_doc, page
from bulk.sandbox.core import Problem, SandboxProblem

__all__ = ["create_address", "create_customer", "get_customer", "list_customers"]


def list_customers(api: Api, request: web.Request, org: Org, body: Any) -> web.Response:
    found = list(org.customers.values())
    email, search = request.query.get("filter[email]"), request.query.get("filter[search]")
    if email is not None:
        found = [c for c in found if c["email"].lower() == email.lower()]
    if search:
        needle = search.lower()
        found = [c for c in found if any(needle in (c[k] or "").lower() for k in
                                         ("given_name", "family_name", "email", "company"))]
    include = includes(request, {"address"})
    rows, meta = page(request, found)
    included = [address_res(org.addresses[c["address_id"]]) for c in rows
                if "address" in include and c["address_id"]]
    return api.respond(list_doc([customer_res(c) for c in rows], meta, included, include))


def get_customer(api: Api, request: web.Request, org: Org, body: Any) -> web.Response:
    customer = org.customers.get(request.match_info["id"])
    if customer is None:
        raise SandboxProblem(Problem.NOT_FOUND)
    return api.respond({"data": customer_res(customer)})


def create_customer(api: Api, request: web.Request, org: Org, body: Any) -> web.Response:
    customer = {"id": api.new_id("customers"), **customer_fields(body), "address_id": None,
                "created_at": now()}
    org.customers[customer["id"]] = customer
    api.crash.committed(request, "customer")
    return api.respond({"data": customer_res(customer)}, 201)


def create_address(api: Api, request: web.Request, org: Org, body: Any) -> web.Response:
    address = {"id": api.new_id("addresses"), **address_fields(body, org.customers.__contains__)}
    org.addresses[address["id"]] = address
    org.customers[address["customer_id"]]["address_id"] = address["id"]
    api.crash.committed(request, "address")
    return api.respond({"data": address_res(address)}, 201)
