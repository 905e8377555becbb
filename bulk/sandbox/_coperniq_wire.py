"""How Coperniq's answers and query parameters look on the wire (the contract is in
``bulk.sandbox.coperniq``'s docstring): JSON answers with exact numbers, the ``createdAt`` /
``updatedAt`` timestamps, an ``{id}`` path parameter, and the paging and filters of a list."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
from aiohttp import web

from bulk.sandbox.coperniq_rules import Invalid
from bulk.sandbox.core import Problem, SandboxProblem
from bulk.sandbox.wire import plain

__all__ = ["json_response", "paginate", "path_id", "utc_now"]


def _number(value: Any) -> Any:
    if isinstance(value, Decimal):
        return orjson.Fragment(plain(value))  # an exact JSON number, as Coperniq's doubles are
    raise TypeError(f"cannot serialise {type(value).__name__}")


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data, default=_number), status=status, content_type="application/json")


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def path_id(request: web.Request, table: Mapping[int, Any]) -> int:
    """The ``{id}`` of the path when ``table`` holds it; else SandboxProblem(NOT_FOUND)."""
    raw = request.match_info["id"]
    if raw.isascii() and raw.isdigit() and len(raw) < 12 and int(raw) in table:
        return int(raw)
    raise SandboxProblem(Problem.NOT_FOUND)


def paginate(request: web.Request, found: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int, int, bool]:
    """``(items, page, page_size, has_more)`` of ``found`` filtered by ``updated_after`` /
    ``updated_before`` and ordered by id (``order_by``); raises Invalid naming a bad parameter."""
    q = request.query
    values = {}
    for name, default in (("page", 1), ("page_size", 20)):
        raw = q.get(name)
        if raw is not None and not (raw.isascii() and raw.isdigit() and len(raw) < 10 and int(raw) >= 1):
            raise Invalid(name, f"{name} must be a positive integer")
        values[name] = default if raw is None else int(raw)
    order = q.get("order_by", "asc")
    if order not in ("asc", "desc"):
        raise Invalid("order_by", "order_by must be asc or desc")
    for name in ("updated_after", "updated_before"):
        if q.get(name) is not None:
            try:
                bound = datetime.fromisoformat(q[name].replace("Z", "+00:00"))
                bound = bound if bound.tzinfo else bound.replace(tzinfo=UTC)
            except ValueError:
                raise Invalid(name, f"{name} must be an ISO 8601 date-time") from None
            after = name == "updated_after"
            found = [v for v in found
                     if (datetime.fromisoformat(v["updatedAt"].replace("Z", "+00:00")) > bound) == after]
    page, size = values["page"], min(100, values["page_size"])
    found = sorted(found, key=lambda v: v["id"], reverse=order == "desc")
    start = (page - 1) * size
    return found[start:start + size], page, size, len(found) > start + size
