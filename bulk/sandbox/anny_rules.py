"""The anny sandbox's rules: JSON:API documents and errors, attribute validation, the money
rule of items and invoices, and the identical-request guard (the contract is in ``anny.py``).

Error objects follow JSON:API v1.1 (``status`` as a string, ``title``, ``detail``, and
``source.pointer`` / ``source.parameter`` naming what is wrong); every problem of a body is
reported, not only the first.
"""

from __future__ import annotations

import math
import re
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import date
from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Context, Decimal
from typing import Any

import orjson

from bulk.sandbox.money import minor_unit
from bulk.sandbox.wire import parse_decimal, plain

__all__ = [
    "ROUNDINGS",
    "ApiError",
    "Errors",
    "IdenticalGuard",
    "ItemTotals",
    "document",
    "error_body",
    "exact",
    "item_totals",
    "money",
    "number",
]

ROUNDINGS = {"half_up": ROUND_HALF_UP, "half_even": ROUND_HALF_EVEN}
_CTX = Context(prec=60, rounding=ROUND_HALF_UP)
_HUNDRED = Decimal(100)
_LIMIT = Decimal(10) ** 12
# RFC 5322 dot-atom local part (no leading, trailing or doubled dot), UTF-8 allowed (RFC 6531),
# then a domain of at least two labels: what Laravel's ``email`` (RFC validation) accepts.
_ATOM = r"[^\s@.\"(),:;<>\[\]\\\x00-\x1f\x7f]+"
_EMAIL = re.compile(rf"{_ATOM}(?:\.{_ATOM})*@[^\s@.\x00-\x1f\x7f]+(?:\.[^\s@.\x00-\x1f\x7f]+)+")
_LOCALE = re.compile(r"[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{1,8})*")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_CURRENCY = re.compile(r"[A-Z]{3}")
_TITLES = {400: "Bad Request", 403: "Forbidden", 404: "Not Found", 409: "Conflict",
           415: "Unsupported Media Type", 422: "Unprocessable Entity"}


def error_body(status: int, errors: list[dict[str, Any]]) -> dict[str, Any]:
    return {"errors": [{"status": str(status), "title": _TITLES.get(status, "Error"), **e}
                       for e in errors]}


class ApiError(Exception):
    """Answer ``status`` with these JSON:API error objects (raised anywhere in a handler)."""

    def __init__(self, status: int, errors: list[dict[str, Any]]) -> None:
        super().__init__(status)
        self.status, self.errors = status, errors

    @classmethod
    def one(cls, status: int, detail: str, *, pointer: str | None = None,
            parameter: str | None = None) -> ApiError:
        error: dict[str, Any] = {"detail": detail}
        if pointer is not None or parameter is not None:
            error["source"] = {"pointer": pointer} if pointer is not None else {"parameter": parameter}
        return cls(status, [error])


class Errors:
    """The 422 problems of one body, in the order found."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def add(self, pointer: str, detail: str) -> None:
        self.items.append({"detail": detail, "source": {"pointer": pointer}})

    def param(self, name: str, detail: str) -> None:
        self.items.append({"detail": detail, "source": {"parameter": name}})

    def raise_any(self) -> None:
        if self.items:
            raise ApiError(422, self.items)

    # --- attribute readers: each returns the value (None when absent) and notes problems ---

    def check_known(self, members: dict[str, Any], allowed: frozenset[str],
                    where: str = "attributes") -> None:
        for name in sorted(members.keys() - allowed):
            self.add(f"/data/{where}/{name}", f"The {name} {where[:-1]} is not known or cannot be set.")

    def text(self, attrs: dict[str, Any], name: str, *, required: bool = False,
             max_len: int = 255) -> str | None:
        value = attrs.get(name)
        pointer = f"/data/attributes/{name}"
        if value is None or value == "":
            if required:
                self.add(pointer, f"The {name} field is required.")
            return None
        if not isinstance(value, str):
            self.add(pointer, f"The {name} must be a string.")
            return None
        if len(value) > max_len:
            self.add(pointer, f"The {name} may not be greater than {max_len} characters.")
        return value

    def boolean(self, attrs: dict[str, Any], name: str, default: bool = False) -> bool:
        value = attrs.get(name, default)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.add(f"/data/attributes/{name}", f"The {name} field must be true or false.")
            return default
        return value

    def day(self, attrs: dict[str, Any], name: str) -> str | None:
        value = attrs.get(name)
        if value is None:
            return None
        try:
            if isinstance(value, str) and _DATE.fullmatch(value):
                date.fromisoformat(value)
                return value
        except ValueError:
            pass
        self.add(f"/data/attributes/{name}", f"The {name} is not a valid date (YYYY-MM-DD).")
        return None

    def amount(self, attrs: dict[str, Any], name: str, *, required: bool,
               non_negative: bool = False) -> Decimal | None:
        pointer = f"/data/attributes/{name}"
        value = attrs.get(name)
        if value is None:
            if required:
                self.add(pointer, f"The {name} field is required.")
            return None
        result = number(value)
        if result is None:
            self.add(pointer, f"The {name} must be a number.")
        elif abs(result) >= _LIMIT or _places(result) > 12:
            self.add(pointer, f"The {name} must be below 10^12 with at most 12 decimals.")
        elif non_negative and result < 0:
            self.add(pointer, f"The {name} must be at least 0.")
        else:
            return result
        return None

    def integer(self, attrs: dict[str, Any], name: str) -> int | None:
        value = attrs.get(name)
        pointer = f"/data/attributes/{name}"
        if value is None:
            self.add(pointer, f"The {name} field is required.")
        elif isinstance(value, bool) or not isinstance(value, int):
            self.add(pointer, f"The {name} must be an integer.")
        else:
            return value
        return None

    def email(self, attrs: dict[str, Any]) -> str | None:
        value = self.text(attrs, "email", required=True)
        if value is not None and not _EMAIL.fullmatch(value):
            self.add("/data/attributes/email", "The email must be a valid email address.")
        return value

    def locale(self, attrs: dict[str, Any]) -> str | None:
        value = self.text(attrs, "locale", required=True, max_len=35)
        if value is not None and not _LOCALE.fullmatch(value):
            self.add("/data/attributes/locale", "The locale must be a language tag such as de or en-GB.")
        return value

    def currency(self, attrs: dict[str, Any]) -> str | None:
        value = self.text(attrs, "currency", required=True)
        if value is not None and not _CURRENCY.fullmatch(value):
            self.add("/data/attributes/currency", "The currency must be an ISO 4217 code such as EUR.")
            return None
        return value

    def country(self, attrs: dict[str, Any]) -> str | None:
        value = self.text(attrs, "country_code")
        if value is not None and not re.fullmatch(r"[A-Z]{2}", value):
            self.add("/data/attributes/country_code", "The country code must be ISO 3166-1 alpha-2.")
        return value

    def related(self, rels: dict[str, Any], name: str, kind: str, *, required: bool,
                exists: Callable[[str], bool]) -> str | None:
        """The id of a to-one relationship ``{"data": {"type": kind, "id": ...}}``."""
        pointer = f"/data/relationships/{name}"
        rel = rels.get(name)
        data = rel.get("data") if isinstance(rel, dict) else None
        if data is None:
            if required or (rel is not None and not isinstance(rel, dict)):
                self.add(pointer, f"The {name} relationship is required.")
            return None
        if (not isinstance(data, dict) or data.get("type") != kind
                or not isinstance(data.get("id"), str)):
            self.add(pointer, f"The {name} relationship must be {{\"data\": {{\"type\": \"{kind}\", \"id\": ...}}}}.")
            return None
        if not exists(data["id"]):
            self.add(pointer, f"The related {kind} resource does not exist.")
            return None
        return str(data["id"])


def document(body: Any, kind: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(attributes, relationships)`` of a JSON:API resource document of type ``kind``."""
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, dict):
        raise ApiError.one(400, "The request body must be a JSON:API document with a data object.",
                           pointer="/data")
    if data.get("type") != kind:
        raise ApiError.one(409, f"The resource type must be {kind}.", pointer="/data/type")
    if "id" in data:
        raise ApiError.one(422, "Client-generated ids are not supported.", pointer="/data/id")
    attrs, rels = data.get("attributes", {}), data.get("relationships", {})
    if not isinstance(attrs, dict) or not isinstance(rels, dict):
        raise ApiError.one(400, "attributes and relationships must be objects.", pointer="/data")
    return attrs, rels


def number(value: Any) -> Decimal | None:
    """A JSON number (as parsed exactly: int or Decimal) as a finite Decimal; strings refused."""
    return None if isinstance(value, str) else parse_decimal(value)


def _places(value: Decimal) -> int:
    exponent = value.normalize().as_tuple().exponent
    return -exponent if isinstance(exponent, int) and exponent < 0 else 0


def money(value: Decimal, currency: str) -> orjson.Fragment:
    """An amount as a JSON number with exactly the currency's minor digits (``119.00``)."""
    text = f"{value.quantize(Decimal(1).scaleb(-minor_unit(currency)), context=_CTX):f}"
    return orjson.Fragment(text[1:] if text.startswith("-") and not value else text)


def exact(value: Decimal) -> orjson.Fragment:
    """A Decimal as a JSON number, digit for digit as it was sent."""
    return orjson.Fragment(plain(value))


@dataclass(frozen=True, slots=True)
class ItemTotals:
    net: Decimal
    tax: Decimal
    gross: Decimal
    derived_single: Decimal  # the single amount of the other direction


def item_totals(quantity: int, single: Decimal, rate: Decimal, *, from_net: bool, currency: str,
                rounding: str = ROUND_HALF_UP) -> ItemTotals:
    """One item by the money rule (anny does not document its rounding; this is ours):
    from net: net = r(q x single_net), tax = r(net x rate / 100), gross = net + tax;
    from gross: gross = r(q x single_gross), net = r(gross x 100 / (100 + rate)), tax = gross - net;
    r() rounds to the currency's minor unit, half up. The derived single amount (the other
    direction's unit price) is rounded the same way and is informational only."""
    unit = Decimal(1).scaleb(-minor_unit(currency))
    ctx = Context(prec=60, rounding=rounding)

    def r(value: Decimal) -> Decimal:
        return value.quantize(unit, context=ctx)

    amount = r(ctx.multiply(Decimal(quantity), single))
    factor = ctx.add(_HUNDRED, rate)
    if from_net:
        tax = r(ctx.divide(ctx.multiply(amount, rate), _HUNDRED))
        return ItemTotals(amount, tax, ctx.add(amount, tax), r(ctx.divide(ctx.multiply(single, factor), _HUNDRED)))
    net = r(ctx.divide(ctx.multiply(amount, _HUNDRED), factor))
    return ItemTotals(net, ctx.subtract(amount, net), amount, r(ctx.divide(ctx.multiply(single, _HUNDRED), factor)))


class IdenticalGuard:
    """anny's "at most N identical requests per second" (A-rate), as a sliding 1 s window of
    arrival times per request identity. A refused request is not counted, so a client that
    honours ``Retry-After`` is served on its return. ``clock`` is monotonic seconds."""

    def __init__(self, limit: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self._clock = clock
        self._seen: dict[Hashable, deque[float]] = {}

    def admit(self, key: Hashable) -> int:
        """0 when the request may go on, else the Retry-After seconds (>= 1)."""
        if self.limit <= 0:
            return 0
        now = self._clock()
        if len(self._seen) > 10_000:  # forget identities idle for more than a second
            self._seen = {k: q for k, q in self._seen.items() if q and q[-1] > now - 1}
        times = self._seen.setdefault(key, deque())
        while times and times[0] <= now - 1:
            times.popleft()
        if len(times) >= self.limit:
            return max(1, math.ceil(times[0] + 1 - now))
        times.append(now)
        return 0

    def clear(self) -> None:
        self._seen.clear()


# --- request bodies -> stored fields (validated; every problem listed) ----------------------

CUSTOMER_KEYS = frozenset({"given_name", "family_name", "email", "company", "locale", "mobile"})
ADDRESS_KEYS = frozenset({"name", "street_address", "address_line_2", "zip_code", "city", "area",
                          "country_code"})
INVOICE_KEYS = frozenset({"currency", "recipient", "invoicing_party", "calculate_from_net",
                          "issued_at", "due_date", "notes", "vat_number", "is_quote", "number"})
ITEM_KEYS = frozenset({"title", "subtitle", "quantity", "tax_rate", "single_net_amount",
                       "single_gross_amount"})


def customer_fields(body: Any) -> dict[str, Any]:
    attrs, rels = document(body, "customers")
    e = Errors()
    e.check_known(attrs, CUSTOMER_KEYS)
    e.check_known(rels, frozenset(), "relationships")
    fields = {"email": e.email(attrs), "locale": e.locale(attrs),
              **{k: e.text(attrs, k) for k in ("given_name", "family_name", "company", "mobile")}}
    e.raise_any()
    return fields


def address_fields(body: Any, customer_exists: Callable[[str], bool]) -> dict[str, Any]:
    attrs, rels = document(body, "addresses")
    e = Errors()
    e.check_known(attrs, ADDRESS_KEYS)
    e.check_known(rels, frozenset({"addressable"}), "relationships")
    fields: dict[str, Any] = {k: e.text(attrs, k) for k in sorted(ADDRESS_KEYS - {"country_code"})}
    fields["country_code"] = e.country(attrs)
    fields["customer_id"] = e.related(rels, "addressable", "customers", required=True,
                                      exists=customer_exists)
    e.raise_any()
    return fields


def invoice_fields(body: Any, customer_exists: Callable[[str], bool],
                   number_taken: Callable[[str], bool]) -> dict[str, Any]:
    attrs, rels = document(body, "invoices")
    e = Errors()
    e.check_known(attrs, INVOICE_KEYS)
    e.check_known(rels, frozenset({"customer"}), "relationships")
    fields: dict[str, Any] = {
        "number": e.text(attrs, "number"), "currency": e.currency(attrs),
        "calculate_from_net": e.boolean(attrs, "calculate_from_net"),
        "is_quote": e.boolean(attrs, "is_quote"),
        "issued_at": e.day(attrs, "issued_at"), "due_date": e.day(attrs, "due_date"),
        **{k: e.text(attrs, k, max_len=65_535)
           for k in ("recipient", "invoicing_party", "notes", "vat_number")},
        "customer_id": e.related(rels, "customer", "customers", required=False,
                                 exists=customer_exists),
    }
    if fields["number"] is not None and number_taken(fields["number"]):
        e.add("/data/attributes/number", "The number has already been taken.")
    e.raise_any()
    return fields


#: what ``PATCH /invoices/{id}`` may change (our assumption: anny documents the PATCH, not its
#: fields); the currency, price mode and number are fixed at creation
INVOICE_UPDATE_KEYS = frozenset({"recipient", "invoicing_party", "issued_at", "due_date", "notes", "vat_number"})


def invoice_update_fields(body: Any, invoice_id: str) -> dict[str, Any]:
    """The attributes a JSON:API update document ``{"data": {"type": "invoices", "id",
    "attributes"}}`` sets (only those given)."""
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, dict):
        raise ApiError.one(400, "The request body must be a JSON:API document with a data object.",
                           pointer="/data")
    if data.get("type") != "invoices":
        raise ApiError.one(409, "The resource type must be invoices.", pointer="/data/type")
    if data.get("id") != invoice_id:
        raise ApiError.one(409, "The resource id must be the invoice's id.", pointer="/data/id")
    attrs, rels = data.get("attributes", {}), data.get("relationships", {})
    if not isinstance(attrs, dict) or not isinstance(rels, dict):
        raise ApiError.one(400, "attributes and relationships must be objects.", pointer="/data")
    e = Errors()
    e.check_known(attrs, INVOICE_UPDATE_KEYS)
    e.check_known(rels, frozenset(), "relationships")
    fields = {k: (e.day(attrs, k) if k in ("issued_at", "due_date") else e.text(attrs, k, max_len=65_535))
              for k in sorted(attrs.keys() & INVOICE_UPDATE_KEYS)}
    e.raise_any()
    return fields


def item_fields(body: Any, from_net: bool, invoice_of: Callable[[str], dict[str, Any] | None]
                ) -> dict[str, Any]:
    """The item's fields plus ``invoice`` (the stored draft it goes on)."""
    attrs, rels = document(body, "items")
    e = Errors()
    e.check_known(attrs, ITEM_KEYS)
    e.check_known(rels, frozenset({"document"}), "relationships")
    given, other = (("single_net_amount", "single_gross_amount") if from_net
                    else ("single_gross_amount", "single_net_amount"))
    fields: dict[str, Any] = {
        "title": e.text(attrs, "title", required=True, max_len=185),
        "subtitle": e.text(attrs, "subtitle", max_len=185),
        "quantity": e.integer(attrs, "quantity"),
        "tax_rate": e.amount(attrs, "tax_rate", required=True, non_negative=True),
        "single": e.amount(attrs, given, required=True),
    }
    if attrs.get(other) is not None:
        e.add(f"/data/attributes/{other}",
              f"Send {given} only: calculate_from_net is {str(from_net).lower()}.")
    invoice_id = e.related(rels, "document", "invoices", required=True,
                           exists=lambda i: invoice_of(i) is not None)
    invoice = invoice_of(invoice_id) if invoice_id is not None else None
    if invoice is not None:
        if invoice["status"] != "draft":
            e.add("/data/relationships/document", "Items can only be added to a draft invoice.")
        if invoice["calculate_from_net"] != from_net:
            e.param("calculate_from_net", "calculate_from_net must match the invoice's "
                    f"({str(invoice['calculate_from_net']).lower()}).")
    e.raise_any()
    fields["invoice"] = invoice
    return fields
