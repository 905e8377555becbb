"""The parser's general path: every line, every error. The reference the fast path must agree with.

`_parse_general` reads a line with orjson (amounts with a fraction or exponent re-read exactly
with ``json`` into Decimals; a line orjson refuses is read leniently only to name the offending
field), then `_build` checks the fields in the fixed order `bulk.records` documents and raises
`InvalidRecord` for the first problem.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import orjson

from ._record_fields import (
    _AMOUNT_KEYS,
    _COUNTRIES,
    _EMAIL,
    _LOCALE,
    _LONG,
    _MISSING,
    _PRICES,
    _SHORT,
    _STATUSES,
    _THOUSAND,
    _ZERO,
    _absent,
    _amount,
    _cached_amount,
    _choice,
    _date,
    _got,
    _lenient_decimal,
    _plain,
    _plain_exact,
    _show,
    _string,
)
from ._record_types import Address, Customer, Line, Record, _new_address, _new_customer, _new_line, _new_record
from .errors import InvalidRecord
from .money import is_currency


def _parse_general(raw: bytes, line_no: int) -> Record:
    """`parse_record` for every line: the reference the fast path must agree with, and every error's source."""
    data = raw[3:] if raw.startswith(b"\xef\xbb\xbf") else raw
    if data.endswith(b"\r"):
        data = data[:-1]
    if not data or data.isspace():  # as ``not data.strip()``, without copying the line
        raise InvalidRecord(line_no, "(line)", "the line is empty", "remove it")
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        # Some inputs orjson refuses are still JSON (1e999999, a lone surrogate escape); read them leniently
        # only to name the offending field if there is one, then reject the line regardless.
        _build(_lenient_loads(data, line_no, exc), line_no)
        raise _malformed(line_no, str(exc)) from None
    if type(obj) is dict and _has_float_amount(obj.get("lines")):
        # orjson turns JSON numbers with a fraction or exponent into float; re-read the amounts from the text
        # so each Decimal equals its source (0.1 stays 0.1, 1.10 stays 1.10). Ints are exact already.
        try:
            exact = json.loads(data, parse_float=_lenient_decimal)
        except (ValueError, RecursionError) as err:  # orjson accepted it, so json should too
            raise _malformed(line_no, str(err)) from None
        for line, exact_line in zip(obj["lines"], exact["lines"], strict=True):
            if type(line) is dict:
                for key in _AMOUNT_KEYS:
                    if type(line.get(key)) is float:
                        line[key] = exact_line[key]
    return _build(obj, line_no)


def _has_float_amount(lines: Any) -> bool:
    if type(lines) is not list:
        return False
    for ln in lines:  # plain loops: nested any() generators cost more than the check itself
        if type(ln) is dict and (type(ln.get("quantity")) is float or type(ln.get("unit_price")) is float
                                 or type(ln.get("tax_rate")) is float):
            return True
    return False


def _lenient_loads(data: bytes, ln: int, exc: orjson.JSONDecodeError) -> Any:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as bad:
        raise InvalidRecord(ln, "(line)", f"is not valid UTF-8 (byte 0x{data[bad.start]:02x} at offset "
                            f"{bad.start})", "save the file as UTF-8") from None
    try:
        # NaN / Infinity literals are not JSON either; as Decimals they get a field-specific message below.
        return json.loads(text, parse_float=_lenient_decimal, parse_constant=Decimal)
    except (ValueError, RecursionError):
        raise _malformed(ln, str(exc)) from None


def _malformed(ln: int, message: str) -> InvalidRecord:
    fix = ("the line is cut short: complete the JSON object (was the file truncated?)"
           if "unexpected end of data" in message else "write exactly one JSON object per line")
    return InvalidRecord(ln, "(line)", f"is not valid JSON: {message[:120]}", fix)


_ADDRESS_FIELDS = tuple((key, f"customer.address.{key}")
                        for key in ("line1", "line2", "city", "region", "postal_code", "country"))



def _address(ln: int, value: Any) -> Address | None:
    if value is _MISSING or value is None:
        return None
    if type(value) is not dict:
        raise InvalidRecord(ln, "customer.address", f"must be an object, got {_got(value)}",
                            'write it as {"line1": ..., "country": "DE"} or null')
    parts = []
    for key, path in _ADDRESS_FIELDS:
        part = value.get(key)
        # _plain(part, _SHORT) written out: six calls a record saved
        if part is not None and not (type(part) is str and 0 < len(part) <= _SHORT and part.strip()
                                     and part.isprintable()):
            part = _string(ln, path, value.get(key, _MISSING))
        parts.append(part)
    country = parts[-1]
    if country is not None and country not in _COUNTRIES:
        fix = (f'write it in upper case: "{country.upper()}"' if country.upper() in _COUNTRIES
               else 'use an ISO 3166-1 alpha-2 code such as "DE" or "US"')
        raise InvalidRecord(ln, "customer.address.country", f"is not an ISO 3166-1 alpha-2 code: "
                            f"{_show(country)}", fix)
    return _new_address(*parts)


def _customer(ln: int, value: Any) -> Customer:
    if value is _MISSING or value is None:
        raise _absent(ln, "customer", value, "add a customer object with at least external_id and email")
    if type(value) is not dict:
        raise InvalidRecord(ln, "customer", f"must be an object, got {_got(value)}",
                            'write it as {"external_id": ..., "email": ...}')
    ext = value.get("external_id")
    if not _plain_exact(ext, 100):
        ext = _string(ln, "customer.external_id", value.get("external_id", _MISSING), max_len=100, required=True,
                      exact=True)
    email = value.get("email")
    if not _plain(email, 254):
        email = _string(ln, "customer.email", value.get("email", _MISSING), max_len=254, required=True)
    if not _EMAIL.fullmatch(email):
        raise InvalidRecord(ln, "customer.email", f"is not a plausible e-mail address: {_show(email)}",
                            "write it like jane@example.com")
    name = value.get("name")
    if name is not None and not _plain(name, _SHORT):
        name = _string(ln, "customer.name", name)
    company = value.get("company")
    if company is not None and not _plain(company, _SHORT):
        company = _string(ln, "customer.company", company)
    locale = value.get("locale")
    if not _plain(locale, 35):
        locale = _string(ln, "customer.locale", value.get("locale", _MISSING), max_len=35) or "en"
    if not _LOCALE.fullmatch(locale):
        raise InvalidRecord(ln, "customer.locale", f"is not a language tag: {_show(locale)}",
                            'use a code such as "en", "de" or "pt-BR"')
    return _new_customer(ext, email, name, company, locale, _address(ln, value.get("address", _MISSING)))



def _line(ln: int, i: int, value: Any) -> Line:
    # The field paths (f"lines[{i}]...") are built only on the way to a message: on a valid
    # line, which is nearly every line, no string is formatted.
    if type(value) is not dict:
        raise InvalidRecord(ln, f"lines[{i}]", f"must be an object, got {_got(value)}",
                            'write it as {"title": ..., "quantity": ..., "unit_price": ..., "tax_rate": ...}')
    title = value.get("title")
    # _plain(title, 185) written out: once per invoice line
    if not (type(title) is str and 0 < len(title) <= 185 and title.strip() and title.isprintable()):
        title = _string(ln, f"lines[{i}].title", value.get("title", _MISSING), max_len=185, required=True)
    description = value.get("description")
    if description is not None and not _plain(description, _LONG):
        description = _string(ln, f"lines[{i}].description", description, max_len=_LONG, multiline=True)
    raw = value.get("quantity", _MISSING)
    quantity = _cached_amount(raw) or _amount(ln, f"lines[{i}].quantity", raw)  # a cached one is never 0
    if quantity <= _ZERO:
        raise InvalidRecord(ln, f"lines[{i}].quantity", f"must be greater than 0, got {quantity}",
                            "use a positive quantity; for a discount make unit_price negative")
    raw = value.get("unit_price", _MISSING)
    unit_price = _cached_amount(raw)
    if unit_price is None:
        unit_price = _amount(ln, f"lines[{i}].unit_price", raw)
    raw = value.get("tax_rate", _MISSING)
    tax_rate = _cached_amount(raw)
    if tax_rate is None:
        tax_rate = _amount(ln, f"lines[{i}].tax_rate", raw)
    if not _ZERO <= tax_rate <= _THOUSAND:
        raise InvalidRecord(ln, f"lines[{i}].tax_rate", f"must be between 0 and 1000 percent, got {tax_rate}",
                            'write the rate in percent, e.g. "19" for 19 %')
    item_ref = value.get("item_ref")
    if item_ref is not None and not _plain_exact(item_ref, 100):
        item_ref = _string(ln, f"lines[{i}].item_ref", item_ref, max_len=100, exact=True)
    return _new_line(title, description, quantity, unit_price, tax_rate, item_ref)


def _build(obj: Any, ln: int) -> Record:
    if type(obj) is not dict:
        raise InvalidRecord(ln, "(line)", f"must be a JSON object, got {_got(obj)}",
                            "put exactly one invoice object {...} on each line")
    external_id = obj.get("external_id")
    if not _plain_exact(external_id, 100):
        external_id = _string(ln, "external_id", obj.get("external_id", _MISSING), max_len=100, required=True,
                              exact=True)
    customer = _customer(ln, obj.get("customer", _MISSING))
    currency = obj.get("currency", _MISSING)
    if type(currency) is not str or not is_currency(currency):
        if currency is _MISSING or currency is None:
            raise _absent(ln, "currency", currency, 'add an ISO 4217 code such as "EUR"')
        up = currency.upper() if type(currency) is str else ""
        fix = (f'write it in upper case: "{up}"' if is_currency(up)
               else 'use an active ISO 4217 code such as "EUR", "USD" or "JPY"')
        raise InvalidRecord(ln, "currency", f"is not an active ISO 4217 currency code: {_show(currency)}", fix)
    status = _choice(ln, "status", obj.get("status", _MISSING), _STATUSES)
    prices = _choice(ln, "prices", obj.get("prices", _MISSING), _PRICES)
    issue_date = _date(ln, "issue_date", obj.get("issue_date", _MISSING))
    if issue_date is None and status != "draft":
        raise InvalidRecord(ln, "issue_date", f"is required when status is {status}",
                            "add issue_date as YYYY-MM-DD, or set status to draft")
    due_date = _date(ln, "due_date", obj.get("due_date", _MISSING))
    notes = obj.get("notes")
    if notes is not None and not _plain(notes, _LONG):
        notes = _string(ln, "notes", obj.get("notes", _MISSING), max_len=_LONG, multiline=True)
    lines = obj.get("lines", _MISSING)
    if type(lines) is not list or not lines:
        if lines is _MISSING or lines is None:
            raise _absent(ln, "lines", lines, "add a non-empty array of line objects")
        what = "is empty" if lines == [] else f"must be an array, got {_got(lines)}"
        raise InvalidRecord(ln, "lines", what, "give a non-empty array of line objects")
    parsed = tuple([_line(ln, i, item) for i, item in enumerate(lines)])
    extra = obj.get("extra", _MISSING)
    if extra is _MISSING or extra is None:
        extra = {}
    elif type(extra) is not dict:
        raise InvalidRecord(ln, "extra", f"must be an object, got {_got(extra)}", "write it as {...} or leave it out")
    return _new_record(ln, external_id, customer, currency, issue_date, due_date, status, prices, notes, parsed, extra)
