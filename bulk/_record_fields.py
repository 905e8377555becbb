"""The field rules of an invoice record: each field's checks, its error message and its value.

Every function here takes the line number and the field's dotted path and either returns the
field's value (a str, a Decimal, a date, None for an absent optional one) or raises
`InvalidRecord(line, field, reason, fix)`: the messages `bulk.records.parse_record` reports.
Also the tables and patterns they check against, and the bounded caches of valid amounts
and dates (a distinct text is checked once). Used by both of the parser's paths.
"""

from __future__ import annotations

import datetime
import re
from decimal import Decimal, InvalidOperation
from typing import Any, TypeGuard

from .errors import InvalidRecord

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


def _lenient_decimal(text: str) -> Decimal:
    try:
        return Decimal(text)
    except InvalidOperation:  # an exponent past what Decimal holds: reported as out of range
        return Decimal("Infinity")



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



def _plain(value: Any, max_len: int) -> TypeGuard[str]:
    """True for a string `_string` accepts as it is (not ``exact``): the common case, checked
    without `_string`'s keyword call. Anything else (absent, null, blank, control characters,
    line breaks, too long) goes through `_string`, whose verdict and message stand. ~20 string
    fields a record: this fast path measured ~5 µs of a record's ~25 µs parse."""
    return type(value) is str and 0 < len(value) <= max_len and bool(value.strip()) and value.isprintable()


def _plain_exact(value: Any, max_len: int) -> TypeGuard[str]:
    """`_plain` for identifiers (``exact``: no surrounding whitespace either)."""
    return type(value) is str and 0 < len(value) <= max_len and value.strip() == value and value.isprintable()



def _cached_amount(value: Any) -> Decimal | None:
    """The Decimal of an amount text (or int) already validated by `_amount`, else None."""
    if type(value) is str:
        return _AMOUNT_CACHE.get(value)
    return _INT_AMOUNT_CACHE.get(value) if type(value) is int else None
