"""JSON on the wire, for every sandbox dialect: exact parsing of bodies, fast answers.

* :func:`loads_exact` parses a request body keeping numbers exact: a JSON number with a
  fraction or exponent becomes a ``Decimal`` (never a float), an integer stays ``int`` unless
  it does not fit 64 bits (then a ``Decimal``, which validation refuses as an id).
  ``NaN``/``Infinity`` are not JSON and are refused.
* :func:`dumps` / :func:`json_response` serialise with orjson; a ``Decimal`` is written as a
  plain decimal string (``"100"``, never ``"1E+2"``).
* :func:`parse_decimal` reads an amount sent as a decimal string or a JSON number.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import orjson
from aiohttp import web

__all__ = ["MalformedJSON", "dumps", "json_default", "json_response", "loads_exact",
           "parse_decimal", "plain"]

_DECIMAL_TEXT = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")


class MalformedJSON(ValueError):
    """The body is not valid JSON (including NaN/Infinity and invalid UTF-8)."""


def _refuse_constant(name: str) -> Any:
    raise MalformedJSON(f"{name} is not valid JSON")


def _int_or_decimal(text: str) -> int | Decimal:
    # Integers beyond 64 bits cannot be ids and orjson cannot write them back.
    return int(text) if len(text) < 19 else Decimal(text)


def loads_exact(body: bytes) -> Any:
    """Parse a request body, numbers exact (see the module docstring). Raises MalformedJSON."""
    try:
        return json.loads(body, parse_float=Decimal, parse_int=_int_or_decimal,
                          parse_constant=_refuse_constant)
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise MalformedJSON(str(exc)) from None


def plain(value: Decimal) -> str:
    """A Decimal as plain text, no exponent: ``1E+2`` -> ``100``, ``-0`` -> ``0``."""
    text = format(value, "f")
    return text[1:] if value.is_zero() and text.startswith("-") else text


def json_default(value: Any) -> Any:
    """orjson ``default``: Decimals as plain strings."""
    if isinstance(value, Decimal):
        return plain(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def dumps(data: Any) -> bytes:
    return orjson.dumps(data, default=json_default)


def json_response(data: Any, status: int = 200, *, headers: Mapping[str, str] | None = None,
                  content_type: str = "application/json") -> web.Response:
    """A JSON answer serialised by orjson."""
    return web.Response(body=dumps(data), status=status, headers=headers,
                        content_type=content_type)


def parse_decimal(value: Any) -> Decimal | None:
    """An amount as a finite Decimal, or None when ``value`` is not one.

    Accepts a decimal string (``"12"``, ``"-0.5"``; no sign ``+``, exponent, spaces or bare
    point) or a JSON number as parsed by :func:`loads_exact`. Booleans are not numbers.
    """
    if isinstance(value, str):
        return Decimal(value) if _DECIMAL_TEXT.fullmatch(value) else None
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, Decimal) and value.is_finite():
        return value
    return None
