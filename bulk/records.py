"""The invoice record: parse and validate one NDJSON line into a frozen `Record`.

Contract of `parse_record`: it returns a `Record` or raises `InvalidRecord(line_no, field, reason, fix)` for
the FIRST problem, checked in a fixed order (external_id, customer.*, currency, status, prices, issue_date,
due_date, notes, lines[i].*, extra). ``field`` is a dotted path (``customer.email``, ``lines[0].quantity``;
line indexes are 0-based) or ``(line)`` for whole-line problems. Messages quote at most 80 characters of a
value. Duplicate external ids are the pipeline's business, not this module's.
"""

from __future__ import annotations

import datetime
import json
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, TypeGuard

import msgspec
import orjson

from . import _record_schema as _schema
from ._frozen import constructor
from .errors import InvalidRecord
from .money import Totals, is_currency
from .money import invoice_totals as _invoice_totals
from .money import line_totals as _line_totals

__all__ = ["Address", "Customer", "Line", "Record", "parse_record", "peek_external_id"]

# ISO 3166-1 alpha-2: the 249 officially assigned codes.
_COUNTRIES = frozenset(
    "AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS BT BV BW "
    "BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC EE EG EH ER ES ET FI "
    "FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN "
    "IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME "
    "MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF "
    "PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV "
    "SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE "
    "YT ZA ZM ZW".split()
)
_STATUSES = ("draft", "sent", "paid")  # first = default
_PRICES = ("net", "gross")
_AMOUNT_KEYS = ("quantity", "unit_price", "tax_rate")
_MISSING: Any = object()
_LIMIT = 10**12  # |amount| must be below this
_SHORT, _LONG = 255, 65_535  # sanity caps for free text; ids (100) and titles (185) have their own
# Control characters (and unpaired surrogates, which only the lenient json fallback can produce) break every
# API we target; free text (notes, descriptions) may keep tab, newline and carriage return.
_BAD_ONELINE = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")
_BAD_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")  # date.fromisoformat alone also takes 20260331, 2026-W13
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")  # Decimal() also takes "1_0"
_EMAIL = re.compile(r"[^@\s\x00-\x1f\x7f]{1,64}@[^@\s\x00-\x1f\x7f.]+(?:\.[^@\s\x00-\x1f\x7f.]+)+")
_LOCALE = re.compile(r"[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{1,8})*")
# The common shapes, within every limit of _amount(): they skip its slower general checks.
_PLAIN_AMOUNT = re.compile(r"-?[0-9]{1,12}(?:\.[0-9]{1,12})?")
_AMOUNT_FIX = 'write it as a decimal string such as "12.50"'
_ZERO, _THOUSAND = Decimal(0), Decimal(1000)  # compared with Decimals: no int conversion each time


@dataclass(frozen=True, slots=True)
class Address:
    line1: str | None
    line2: str | None
    city: str | None
    region: str | None
    postal_code: str | None
    country: str | None  # ISO 3166-1 alpha-2, upper case


@dataclass(frozen=True, slots=True)
class Customer:
    external_id: str
    email: str
    name: str | None
    company: str | None
    locale: str  # "en" when absent
    address: Address | None


@dataclass(frozen=True, slots=True)
class Line:
    """One invoice line. Amounts equal their source text; print them with ``format(x, "f")``."""

    title: str
    description: str | None
    quantity: Decimal  # > 0
    unit_price: Decimal  # negative for a discount; may carry more decimals than the currency
    tax_rate: Decimal  # percent, 0..1000
    item_ref: str | None


@dataclass(frozen=True, slots=True)
class Record:
    """A valid invoice. Optional strings that were empty in the input are None."""

    line_no: int
    external_id: str
    customer: Customer
    currency: str
    issue_date: datetime.date | None  # None only when status == "draft"
    due_date: datetime.date | None
    status: str  # draft | sent | paid
    prices: str  # net | gross: whether unit_price includes tax
    notes: str | None
    lines: tuple[Line, ...]
    extra: dict[str, Any]

    def line_totals(self) -> list[Totals]:
        """Each line's totals by the money rule (`bulk.money`)."""
        return [_line_totals(ln.quantity, ln.unit_price, ln.tax_rate, self.prices, self.currency) for ln in self.lines]

    def totals(self) -> Totals:
        """The invoice's totals: the sums of its lines' rounded totals."""
        return _invoice_totals([(ln.quantity, ln.unit_price, ln.tax_rate) for ln in self.lines],
                               self.prices, self.currency)


# The parser builds these per record: the fast constructors skip the frozen __init__'s per-field
# object.__setattr__ (bulk._frozen), for identical objects.
_new_address = constructor(Address)
_new_customer = constructor(Customer)
_new_line = constructor(Line)
_new_record = constructor(Record)


def parse_record(raw: bytes, line_no: int) -> Record:
    """Parse one line (its bytes without the trailing newline) into a `Record`.

    Tolerates a UTF-8 BOM at the start and a trailing ``\\r``. Raises `InvalidRecord` for anything else that
    is wrong (see the module docstring).
    """
    record = _fast_record(raw, line_no)
    return record if record is not None else _parse_general(raw, line_no)


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


def _lenient_decimal(text: str) -> Decimal:
    try:
        return Decimal(text)
    except InvalidOperation:  # an exponent past what Decimal holds: reported as out of range
        return Decimal("Infinity")


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


def _show(value: Any) -> str:
    """At most 80 characters of a scalar ``value``; strings quoted and escaped."""
    text = value if type(value) is str else str(value)
    return (repr(text[:80]) if type(value) is str else text[:80]) + ("..." if len(text) > 80 else "")


def _got(value: Any) -> str:
    """What a field holds, for a wrong-type message: "a number 42", "a string 'x'", "an array", "null"."""
    if value is None or type(value) is bool:
        return {None: "null", True: "a boolean true", False: "a boolean false"}[value]
    kind = "a string" if type(value) is str else "a number" if isinstance(value, (int, float, Decimal)) else ""
    return f"{kind} {_show(value)}" if kind else "an array" if type(value) is list else "an object"


def _absent(ln: int, path: str, value: Any, fix: str) -> InvalidRecord:
    return InvalidRecord(ln, path, "is missing" if value is _MISSING else "is null", fix)


def _string(ln: int, path: str, value: Any, *, max_len: int = _SHORT, required: bool = False,
            multiline: bool = False, exact: bool = False) -> Any:
    """A string field. Optional ones that are absent, null or blank come back as None; ``exact`` ones
    (identifiers, matched byte for byte downstream) must not carry surrounding whitespace."""
    if (type(value) is str and value and len(value) <= max_len and (value.strip() == value if exact else value.strip())
            and (value.isprintable() or not (_BAD_TEXT if multiline else _BAD_ONELINE).search(value))):
        # The common, valid case in one pass. isprintable() (C, no regex) is False for every
        # control character and surrogate, so when it is True neither pattern can match.
        return value
    if value is _MISSING or value is None:
        if required:
            raise _absent(ln, path, value, f"add {path} as a non-empty string")
        return None
    if type(value) is not str:
        raise InvalidRecord(ln, path, f"must be a string, got {_got(value)}",
                            "write it as a JSON string in double quotes")
    if not value.strip():
        if required:
            raise InvalidRecord(ln, path, "is empty", f"give {path} a non-empty value")
        return None
    if len(value) > max_len:
        raise InvalidRecord(ln, path, f"is {len(value)} characters long, more than {max_len}",
                            f"shorten it to at most {max_len} characters")
    bad = (_BAD_TEXT if multiline else _BAD_ONELINE).search(value)
    if bad:
        raise InvalidRecord(ln, path, f"contains the invalid character U+{ord(bad[0]):04X} at position "
                            f"{bad.start()}", "remove it")
    if exact and value != value.strip():
        raise InvalidRecord(ln, path, f"has leading or trailing whitespace: {_show(value)}", "remove it")
    return value


def _choice(ln: int, path: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value is _MISSING or value is None:
        return allowed[0]
    if value not in allowed or type(value) is not str:
        raise InvalidRecord(ln, path, f"must be one of {', '.join(allowed)}, got {_got(value)}",
                            f'use "{allowed[0]}" (the default) or another of those values')
    return value


# Valid amounts and dates repeat from record to record (tax rates, quantities, list prices, the
# days of a month's invoices): each distinct text is checked and converted once, then reused
# (Decimal and date are immutable). Bounded: emptied when full, so memory does not grow with
# the input. Only values that passed every check are kept.
_CACHE_SIZE = 4096
_AMOUNT_CACHE: dict[str, Decimal] = {}
_INT_AMOUNT_CACHE: dict[int, Decimal] = {}
_DATE_CACHE: dict[str, datetime.date] = {}


def _remember(cache: dict[Any, Any], key: Any, value: Any) -> Any:
    if len(cache) >= _CACHE_SIZE:
        cache.clear()
    cache[key] = value
    return value


def _date(ln: int, path: str, value: Any) -> datetime.date | None:
    if value is _MISSING or value is None:
        return None
    if type(value) is str and (hit := _DATE_CACHE.get(value)) is not None:
        return hit
    if type(value) is not str or not _DATE.fullmatch(value):
        raise InvalidRecord(ln, path, f"must be a date YYYY-MM-DD, got {_got(value)}",
                            'write it like "2026-03-31"')
    try:
        return _remember(_DATE_CACHE, value, datetime.date.fromisoformat(value))  # type: ignore[no-any-return]
    except ValueError:
        raise InvalidRecord(ln, path, f"is not a real date: {value}", "check the day and month") from None


def _amount(ln: int, path: str, value: Any) -> Decimal:
    """A finite Decimal, |value| < 10^12, at most 12 decimal places once trailing zeros are dropped (so every
    product in the money rule is exact at 50 digits). Booleans, NaN, Infinity, bad strings are refused."""
    if type(value) is str:
        hit = _AMOUNT_CACHE.get(value)
        if hit is not None:
            return hit
        if _PLAIN_AMOUNT.fullmatch(value):
            return _remember(_AMOUNT_CACHE, value, Decimal(value))  # type: ignore[no-any-return]
    elif type(value) is int and -_LIMIT < value < _LIMIT:
        hit = _INT_AMOUNT_CACHE.get(value)
        return hit if hit is not None else _remember(_INT_AMOUNT_CACHE, value, Decimal(value))
    if value is _MISSING or value is None:
        raise _absent(ln, path, value, _AMOUNT_FIX)
    if type(value) is int:
        amount = Decimal(value)
    elif type(value) is Decimal:  # from a json re-parse: already exact
        amount = value
    elif type(value) is str:
        if len(value) > 50 or not _DECIMAL.fullmatch(value):
            word = value.strip().lstrip("+-").lower()
            what = "is not a finite number" if word in ("nan", "snan", "inf", "infinity") else "is not a decimal number"
            raise InvalidRecord(ln, path, f"{what}: {_show(value)}", _AMOUNT_FIX)
        amount = _lenient_decimal(value)
    else:
        raise InvalidRecord(ln, path, f"must be a number or a decimal string, got {_got(value)}",
                            _AMOUNT_FIX)
    if not amount.is_finite() or (amount and amount.adjusted() >= 12):
        if amount.is_nan():
            raise InvalidRecord(ln, path, f"is not a number: {_show(value)}", _AMOUNT_FIX)
        raise InvalidRecord(ln, path, f"is out of range: {_show(value)}",
                            "amounts must be below 1000000000000 in absolute value")
    if not amount:
        return Decimal(0)  # "-0", "0E+99", "0E-99": plain zero
    _, digits, exponent = amount.as_tuple()
    assert isinstance(exponent, int)  # finite, checked above
    end = len(digits)
    while exponent < 0 and digits[end - 1] == 0:  # trailing zeros are not precision
        end, exponent = end - 1, exponent + 1
    if exponent < -12:
        raise InvalidRecord(ln, path, f"has {-exponent} decimal places, more than 12",
                            "round it to at most 12 decimal places")
    # 1E+3 -> 1000, so that downstream str() never sends exponent notation for a whole number.
    return amount.quantize(Decimal(1)) if amount.as_tuple().exponent > 0 else amount  # type: ignore[operator]


_ADDRESS_FIELDS = tuple((key, f"customer.address.{key}")
                        for key in ("line1", "line2", "city", "region", "postal_code", "country"))


def _plain(value: Any, max_len: int) -> TypeGuard[str]:
    """True for a string `_string` accepts as it is (not ``exact``): the common case, checked
    without `_string`'s keyword call. Anything else (absent, null, blank, control characters,
    line breaks, too long) goes through `_string`, whose verdict and message stand. ~20 string
    fields a record: this fast path measured ~5 µs of a record's ~25 µs parse."""
    return type(value) is str and 0 < len(value) <= max_len and bool(value.strip()) and value.isprintable()


def _plain_exact(value: Any, max_len: int) -> TypeGuard[str]:
    """`_plain` for identifiers (``exact``: no surrounding whitespace either)."""
    return type(value) is str and 0 < len(value) <= max_len and value.strip() == value and value.isprintable()


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


def _cached_amount(value: Any) -> Decimal | None:
    """The Decimal of an amount text (or int) already validated by `_amount`, else None."""
    if type(value) is str:
        return _AMOUNT_CACHE.get(value)
    return _INT_AMOUNT_CACHE.get(value) if type(value) is int else None


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


# The string rules of `_string` for values the schema let through (non-empty, within length): True
# only when `_string` would return the value unchanged. isprintable() is False for every control
# character and lone surrogate (and for a few characters `_string` allows, such as U+0085 or a
# no-break space: those take the general path).
def _fast_short(value: str | None) -> bool:
    return value is None or (value.isprintable() and not value.isspace())


def _fast_id(value: str | None) -> bool:
    return value is None or (value.isprintable() and value.strip() == value)


def _fast_text(value: str | None) -> bool:
    return value is None or (not value.isspace() and (value.isprintable() or not _BAD_TEXT.search(value)))


# The fast path. Nearly every line is a valid record of the common shape: bulk._record_schema
# decodes and checks most of it in one msgspec pass (C), and `_fast_record` does the few checks
# left, building the very Record the general path below would. Whatever it is unsure of (the
# schema refuses, a check here fails) it leaves to the general path by returning None, so every
# error and every unusual input takes exactly the path it always took.
def _fast_record(raw: bytes, ln: int) -> Record | None:
    try:
        inv = _schema.decode(raw)
        customer = inv.customer
        if not (_fast_id(inv.external_id) and _fast_id(customer.external_id) and _fast_short(customer.name)
                and _fast_short(customer.company) and _fast_text(inv.notes)):
            return None
        where, address = customer.address, None
        if where is not None:
            if not (_fast_short(where.line1) and _fast_short(where.line2) and _fast_short(where.city)
                    and _fast_short(where.region) and _fast_short(where.postal_code)):
                return None
            if where.country is not None and where.country not in _COUNTRIES:
                return None
            address = _new_address(where.line1, where.line2, where.city, where.region, where.postal_code,
                                   where.country)
        status = inv.status or "draft"
        if not is_currency(inv.currency) or (inv.issue_date is None and status != "draft"):
            return None
        lines = []
        for item in inv.lines:
            if not (_fast_short(item.title) and _fast_text(item.description) and _fast_id(item.item_ref)):
                return None
            raw_amount = item.quantity
            quantity = _cached_amount(raw_amount) or _amount(ln, "", raw_amount)
            raw_amount = item.unit_price
            unit_price = _cached_amount(raw_amount)
            if unit_price is None:
                unit_price = _amount(ln, "", raw_amount)
            raw_amount = item.tax_rate
            tax_rate = _cached_amount(raw_amount)
            if tax_rate is None:
                tax_rate = _amount(ln, "", raw_amount)
            if quantity <= _ZERO or not _ZERO <= tax_rate <= _THOUSAND:
                return None
            lines.append(_new_line(item.title, item.description, quantity, unit_price, tax_rate, item.item_ref))
        extra = {} if inv.extra is None else {key: orjson.loads(memoryview(value)) for key, value in inv.extra.items()}
    except (msgspec.MsgspecError, InvalidRecord, orjson.JSONDecodeError, RecursionError):
        return None
    return _new_record(ln, inv.external_id,
                       _new_customer(customer.external_id, customer.email, customer.name, customer.company,
                                     customer.locale or "en", address),
                       inv.currency, inv.issue_date, inv.due_date, status, inv.prices or "net", inv.notes,
                       tuple(lines), extra)


# A JSON string or a bracket: enough to track nesting depth in a malformed or truncated line.
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[{}\[\]]')
_COLON_STRING = re.compile(r'\s*:\s*("(?:[^"\\]|\\.)*")')


def peek_external_id(raw: bytes) -> str | None:
    """The top-level ``external_id`` string of a line, even a malformed or truncated one, cut to 100
    characters; None if there is none. For labelling rejected lines: best effort, never raises."""
    try:
        text = raw.decode("utf-8", errors="replace")
        depth = 0
        for m in _TOKEN.finditer(text):
            tok = m[0]
            if tok in ("{", "["):
                depth += 1
            elif tok in ("}", "]"):
                depth -= 1
            elif depth == 1 and tok == '"external_id"' and (value := _COLON_STRING.match(text, m.end())):
                found = json.loads(value[1])
                return found[:100] if isinstance(found, str) and found else None
        return None
    except Exception:  # labelling must never fail the run
        return None
