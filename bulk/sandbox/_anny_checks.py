"""anny's attribute checks: :class:`Errors` collects every 422 problem of one body, in the
order found, and reads each kind of attribute (text, boolean, date, amount, integer, email,
locale, currency, country, to-one relationship), noting what is wrong.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date
from decimal import Decimal
from typing import Any

from bulk.sandbox._anny_jsonapi import ApiError
from bulk.sandbox.wire import parse_decimal

__all__ = ["Errors", "number"]

_LIMIT = Decimal(10) ** 12
# RFC 5322 dot-atom local part (no leading, trailing or doubled dot), UTF-8 allowed (RFC 6531),
# then a domain of at least two labels: what Laravel's ``email`` (RFC validation) accepts.
_ATOM = r"[^\s@.\"(),:;<>\[\]\\\x00-\x1f\x7f]+"
_EMAIL = re.compile(rf"{_ATOM}(?:\.{_ATOM})*@[^\s@.\x00-\x1f\x7f]+(?:\.[^\s@.\x00-\x1f\x7f]+)+")
_LOCALE = re.compile(r"[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{1,8})*")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_CURRENCY = re.compile(r"[A-Z]{3}")


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


def number(value: Any) -> Decimal | None:
    """A JSON number (as parsed exactly: int or Decimal) as a finite Decimal; strings refused."""
    return None if isinstance(value, str) else parse_decimal(value)


def _places(value: Decimal) -> int:
    exponent = value.normalize().as_tuple().exponent
    return -exponent if isinstance(exponent, int) and exponent < 0 else 0
