"""What an anny request writes and what it reads back, from anny's documented API only
(API-NOTES.md §2, the wire contract written out in bulk/sandbox/anny.py): for the hostile
proxy's ``read_back`` rule (tests/hostile_proxy.py), which releases a held request of a killed
run before the next run reads back the object it writes.

Objects are named by keys, every form a request may name them by:

- an invoice: ``invoice-id:<id>`` and ``invoice-number:<number>``. Written by ``POST
  /invoices`` (its ``number``), ``POST /items`` (its ``relationships.document``), ``POST
  /invoices/{id}/send``, ``PUT|POST /invoices/{id}/set-paid``, ``PATCH /invoices/{id}``;
  read by ``GET /invoices/{id}`` and ``GET /invoices?filter[number]=``.
- a customer: ``customer-id:<id>`` and ``customer-email:<e-mail, lower case>``. Written by
  ``POST /customers`` (its ``email``) and ``POST /addresses`` (its
  ``relationships.addressable``); read by ``GET /customers/{id}`` and ``GET
  /customers?filter[email]=``.

An id and its number (or e-mail) are tied together by the answers the proxy passed on
(:meth:`AnnyObjects.observe`, every answer that came back from the server): an item create
names its invoice by id, a resumed run may look it up by number. Nothing here imports bulk or
the sandbox: it reads HTTP, as the proxy does.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl

__all__ = ["AnnyObjects"]

_API = "/api/v1/"


def _doc(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw.strip() else None
    except ValueError:
        return None


def _related_id(doc: Any, name: str) -> str | None:
    try:
        return str(doc["data"]["relationships"][name]["data"]["id"])
    except (KeyError, TypeError):
        return None


def _attribute(doc: Any, name: str) -> str | None:
    try:
        value = doc["data"]["attributes"][name]
    except (KeyError, TypeError):
        return None
    return None if value is None else str(value)


class AnnyObjects:
    """Keys of the objects an anny request writes (:meth:`writes`) or reads back (:meth:`reads`)."""

    def __init__(self) -> None:
        self._number: dict[str, str] = {}  # invoice id -> number
        self._invoice_ids: dict[str, set[str]] = {}  # number -> invoice ids
        self._email: dict[str, str] = {}  # customer id -> e-mail (lower case)
        self._customer_ids: dict[str, set[str]] = {}  # e-mail -> customer ids

    @staticmethod
    def _route(path: str) -> list[str]:
        return path.split(_API, 1)[1].strip("/").split("/") if _API in path else []

    def _invoice(self, *, ident: str | None = None, number: str | None = None) -> set[str]:
        keys = set()
        if ident is not None:
            keys.add(f"invoice-id:{ident}")
            number = number or self._number.get(ident)
        if number is not None:
            keys.add(f"invoice-number:{number}")
            keys |= {f"invoice-id:{i}" for i in self._invoice_ids.get(number, ())}
        return keys

    def _customer(self, *, ident: str | None = None, email: str | None = None) -> set[str]:
        keys = set()
        if ident is not None:
            keys.add(f"customer-id:{ident}")
            email = email or self._email.get(ident)
        if email is not None:
            email = email.lower()
            keys.add(f"customer-email:{email}")
            keys |= {f"customer-id:{i}" for i in self._customer_ids.get(email, ())}
        return keys

    def writes(self, method: str, path: str, query: str, body: bytes) -> set[str]:
        """The objects a write changes (empty for a read or an unknown route)."""
        route, doc = self._route(path), _doc(body)
        if method == "POST" and route == ["invoices"]:
            return self._invoice(number=_attribute(doc, "number"))
        if method == "POST" and route == ["items"]:
            return self._invoice(ident=_related_id(doc, "document"))
        if len(route) >= 2 and route[0] == "invoices" and (
                (method == "PATCH" and len(route) == 2)
                or (method in ("POST", "PUT") and len(route) == 3 and route[2] in ("send", "set-paid"))):
            return self._invoice(ident=route[1])
        if method == "POST" and route == ["customers"]:
            return self._customer(email=_attribute(doc, "email"))
        if method == "POST" and route == ["addresses"]:
            return self._customer(ident=_related_id(doc, "addressable"))
        return set()

    def reads(self, method: str, path: str, query: str) -> set[str]:
        """The objects a read looks at (empty for a write, a plain list or an unknown route)."""
        if method != "GET":
            return set()
        route, params = self._route(path), dict(parse_qsl(query))
        if route == ["invoices"] and "filter[number]" in params:
            return self._invoice(number=params["filter[number]"])
        if len(route) == 2 and route[0] == "invoices":
            return self._invoice(ident=route[1])
        if route == ["customers"] and "filter[email]" in params:
            return self._customer(email=params["filter[email]"])
        if len(route) == 2 and route[0] == "customers":
            return self._customer(ident=route[1])
        return set()

    def observe(self, method: str, path: str, status: int, answer: bytes) -> None:
        """Learn ids, numbers and e-mails from an answer the server gave (any route)."""
        if not 200 <= status < 300 or _API not in path:
            return
        doc = _doc(answer)
        rows = doc.get("data") if isinstance(doc, dict) else None
        for row in rows if isinstance(rows, list) else [rows]:
            if not isinstance(row, dict) or "id" not in row:
                continue
            attrs = row.get("attributes") or {}
            ident = str(row["id"])
            if row.get("type") == "invoices" and attrs.get("number") is not None:
                self._number[ident] = str(attrs["number"])
                self._invoice_ids.setdefault(str(attrs["number"]), set()).add(ident)
            elif row.get("type") == "customers" and attrs.get("email") is not None:
                email = str(attrs["email"]).lower()
                self._email[ident] = email
                self._customer_ids.setdefault(email, set()).add(ident)
