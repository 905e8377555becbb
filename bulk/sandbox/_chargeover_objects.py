"""ChargeOver's objects (customers, items, currencies, invoices) as plain calls: what one REST
request does to them, whether it came alone or inside a ``_bulk`` call. The wire contract is in
``bulk.sandbox.chargeover``'s docstring; the validation rules in ``chargeover_rules``.

:class:`ChargeOverObjects` is a mixin of the dialect: it works on the dialect's durable tables
(``store``, ``keys``) and id counters (``next_id``, ``line_ids``, kept as the dialect's
``durable_values``), which the dialect sets up in ``clear()``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Context, Decimal
from typing import Any

from bulk.sandbox.chargeover_rules import (
    FILTERS,
    LINE_KEYS,
    Answer,
    Invalid,
    envelope,
    error,
    matches,
    parse_where,
    validate_customer,
    validate_invoice,
    validate_item,
)
from bulk.sandbox.money import line_totals, round_money

__all__ = ["PREFIX", "ChargeOverObjects"]

PREFIX = "/api/v3"
_CTX = Context(prec=60)


class ChargeOverObjects:
    """Dispatch of one API call to its object operation, and the operations themselves."""

    store: dict[str, dict[int, dict[str, Any]]]  # resource -> id -> object
    keys: dict[str, dict[str, int]]  # resource -> external key -> id
    next_id: dict[str, int]
    line_ids: int
    tax_percent: Decimal

    def dispatch(self, method: str, segments: list[str], query: Mapping[str, str], body: Any) -> Answer:
        if segments[:1] == ["invoice"] and segments[2:] == ["_action", "void"] and len(segments) == 4:
            return self._void_invoice(segments[1]) if method == "POST" else error(405, "Method not allowed.")
        if not segments or segments[0] not in self.store or len(segments) > 2:
            return error(404, "Not found.")
        resource = segments[0]
        if method == "GET":
            if len(segments) == 2:
                obj = self._find(resource, segments[1])
                return (200, envelope(200, obj), None) if obj else error(404, f"No such {resource}.")
            return self._list(resource, query)
        if method == "POST" and len(segments) == 1 and resource in ("customer", "item", "invoice"):
            create = {"customer": self._create_customer, "item": self._create_item,
                      "invoice": self._create_invoice}[resource]
            try:
                return create(body)
            except Invalid as exc:
                return error(400, exc.message)
        if method == "PUT" and len(segments) == 2 and resource == "invoice":
            try:
                return self._update_invoice(segments[1], body)
            except Invalid as exc:
                return error(400, exc.message)
        return error(405, "Method not allowed.")

    def _find(self, resource: str, ref: str) -> dict[str, Any] | None:
        if ref.startswith("external_key:"):
            found = self.keys[resource].get(ref[len("external_key:"):])
        else:
            found = int(ref) if ref.isascii() and ref.isdigit() and len(ref) < 19 else None
        return self.store[resource].get(found) if found is not None else None

    def _list(self, resource: str, query: Mapping[str, str]) -> Answer:
        try:
            where = parse_where(query.get("where"), FILTERS[resource])
            limit = min(500, max(1, int(query.get("limit", "10"))))
            offset = max(0, int(query.get("offset", "0")))
        except Invalid as exc:
            return error(400, exc.message)
        except ValueError:
            return error(400, "limit and offset must be integers.")
        found = [obj for obj in self.store[resource].values() if matches(obj, where)]
        page = found[offset:offset + limit]
        if resource == "invoice":
            page = [{k: v for k, v in obj.items() if k != "line_items"} for obj in page]
        return 200, envelope(200, page), None

    def _add(self, resource: str, fields: dict[str, Any]) -> dict[str, Any]:
        new_id = self.next_id[resource]
        self.next_id[resource] = new_id + 1
        obj = {f"{resource}_id": new_id, **fields}
        self.store[resource][new_id] = obj
        if fields.get("external_key") is not None:
            self.keys[resource][fields["external_key"]] = new_id
        return obj

    def _taken(self, resource: str, key: str | None) -> None:
        if key is not None and key in self.keys[resource]:
            raise Invalid(f'The external key "{key}" is already in use.')

    def _create_customer(self, body: Any) -> Answer:
        fields = validate_customer(body)
        self._taken("customer", fields["external_key"])
        obj = self._add("customer", {**fields, "write_datetime": _now()})
        return 201, envelope(201, {"id": obj["customer_id"]}), f"{PREFIX}/customer/{obj['customer_id']}"

    def _create_item(self, body: Any) -> Answer:
        fields = validate_item(body)
        self._taken("item", fields["external_key"])
        obj = self._add("item", {**fields, "write_datetime": _now()})
        return 201, envelope(201, {"id": obj["item_id"]}), f"{PREFIX}/item/{obj['item_id']}"

    def _customer_ref(self, field: str, value: Any) -> int | None:
        if field == "customer_id":
            return value if type(value) is int and value in self.store["customer"] else None
        if field == "customer_external_key" and isinstance(value, str):
            return self.keys["customer"].get(value)
        if field == "customer_token" and isinstance(value, str):
            return next((i for i, c in self.store["customer"].items() if c.get("token") == value), None)
        return None

    def _update_invoice(self, ref: str, body: Any) -> Answer:
        """``PUT /invoice/{id}`` (O-http: 202 + Location): the fields sent replace the stored
        ones, ``line_items`` replaces every line; what is not sent stays. A closed (paid or
        void) invoice cannot be changed; the external key stays unique."""
        obj = self._find("invoice", ref)
        if obj is None:
            return error(404, "No such invoice.")
        if not isinstance(body, dict):
            raise Invalid("invoice: must be a JSON object")
        if obj.get("invoice_status_state") == "c":
            raise Invalid(_closed(obj, "changed"))
        full = dict(body)
        if not any(k in body for k in ("customer_id", "customer_token", "customer_external_key")):
            full["customer_id"] = obj["customer_id"]
        if "line_items" not in body:
            full["line_items"] = [{k: v for k, v in line.items() if k in LINE_KEYS} for line in obj["line_items"]]
        fields = validate_invoice(
            full, customer=self._customer_ref, currency_exists=self.store["currency"].__contains__,
            item=self.store["item"].get)
        key = body.get("external_key")
        if key is not None and key != obj.get("external_key"):
            self._taken("invoice", key)
        sent = {k: v for k, v in fields.items() if k in body or k == "customer_id"}
        new = {**obj, **{k: v for k, v in sent.items() if k != "line_items"}, "mod_datetime": _now()}
        if new.get("date") is None:
            new["date"] = obj["date"]
        if new.get("currency_id") is None:
            new["currency_id"] = obj["currency_id"]
        code = self.store["currency"][new["currency_id"]]["currency_iso4217"]
        new["currency_iso4217"] = code
        if "line_items" in body:
            new["line_items"] = self._lines(fields["line_items"], code)
        subtotal, taxes, total = self._totals(new["line_items"], code)
        paid = obj["total"] - obj["balance"]
        new.update(subtotal=subtotal, taxes=taxes, total=total, balance=total - paid)
        if key is not None and key != obj.get("external_key"):
            if obj.get("external_key") is not None:
                del self.keys["invoice"][obj["external_key"]]
            self.keys["invoice"][key] = obj["invoice_id"]
        self.store["invoice"][obj["invoice_id"]] = new  # a new value: the durable table saves it
        return 202, envelope(202, {"id": obj["invoice_id"]}), f"{PREFIX}/invoice/{obj['invoice_id']}"

    def _lines(self, raw: list[dict[str, Any]], code: str) -> list[dict[str, Any]]:
        """The stored lines of validated ``raw`` lines: each gets a new ``line_item_id`` and its
        ``line_subtotal`` (rate x quantity, rounded half up to the currency's minor unit)."""
        lines = []
        for line in raw:
            amount = line_totals(line["line_quantity"], line["line_rate"], Decimal(0),
                                 tax_inclusive=False, currency=code)[0]
            self.line_ids += 1
            lines.append({"line_item_id": self.line_ids, **line, "line_rate": line["line_rate"].normalize(),
                          "line_quantity": line["line_quantity"].normalize(), "line_subtotal": amount})
        return lines

    def _totals(self, lines: list[dict[str, Any]], code: str) -> tuple[Decimal, Decimal, Decimal]:
        """``(subtotal, taxes, total)`` of stored lines: the sum of their subtotals, the account's
        tax on it (both rounded to the currency's minor unit), and their sum."""
        subtotal = round_money(sum((line["line_subtotal"] for line in lines), Decimal(0)), code)
        taxes = round_money(_CTX.divide(_CTX.multiply(subtotal, self.tax_percent), Decimal(100)), code)
        return subtotal, taxes, subtotal + taxes

    def _create_invoice(self, body: Any) -> Answer:
        fields = validate_invoice(
            body, customer=self._customer_ref, currency_exists=self.store["currency"].__contains__,
            item=self.store["item"].get)
        self._taken("invoice", fields["external_key"])
        currency_id = fields["currency_id"] or next(iter(self.store["currency"]))
        code = self.store["currency"][currency_id]["currency_iso4217"]
        lines = self._lines(fields.pop("line_items"), code)
        subtotal, taxes, total = self._totals(lines, code)
        obj = self._add("invoice", {
            **fields, "date": fields["date"] or datetime.now(UTC).date().isoformat(),
            "currency_id": currency_id, "currency_iso4217": code, "line_items": lines,
            "subtotal": subtotal, "taxes": taxes, "total": total, "balance": total,
            "invoice_status_str": "open-unpaid", "invoice_status_state": "o", "is_paid": False,
            "write_datetime": _now(),
        })
        return 201, envelope(201, {"id": obj["invoice_id"]}), f"{PREFIX}/invoice/{obj['invoice_id']}"


    def _void_invoice(self, ref: str) -> Answer:
        """``POST /invoice/{id}/_action/void`` (O-void): the invoice is closed (``closed-void``,
        state ``c``) and its balance 0 -> 200 ``response: true``; a closed one -> 400."""
        obj = self._find("invoice", ref)
        if obj is None:
            return error(404, "No such invoice.")
        if obj.get("invoice_status_state") == "c":
            return error(400, _closed(obj, "voided"))
        self.store["invoice"][obj["invoice_id"]] = {  # a new value: the durable table saves it
            **obj, "invoice_status_str": "closed-void", "invoice_status_state": "c", "is_void": True,
            "balance": Decimal(0), "void_datetime": _now()}
        return 200, envelope(200, True), None


def _closed(obj: dict[str, Any], what: str) -> str:
    return (f"invoice_status_str: Invoice {obj['invoice_id']} is {obj['invoice_status_str']}: a closed invoice "
            f"cannot be {what}.")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
