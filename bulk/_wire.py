"""The wire types of the HTTP boundary: a target's :class:`Request`, the transport's :class:`Reply`.

Also the body encoding (:func:`dumps`: Decimals as exact JSON numbers) and the per-record fast
constructors (:func:`write_request`, :func:`_new_reply`). :mod:`bulk.transport` re-exports them
(``from bulk.transport import Reply, Request, dumps, write_request`` is the way to import them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import orjson

__all__ = ["Reply", "Request", "dumps", "write_request"]


def _default(obj: Any) -> Any:
    if isinstance(obj, Decimal):
        # Exact decimal text as a JSON number (no float round trip); 'f' avoids exponents.
        return orjson.Fragment(format(obj, "f"))
    raise TypeError(f"cannot serialise {type(obj).__name__}")


def dumps(obj: Any) -> bytes:
    """JSON-encode a request body; Decimals become exact JSON numbers."""
    return _orjson_dumps(obj, default=_default)


_orjson_dumps = orjson.dumps


@dataclass(slots=True)
class Request:
    """One HTTP request a target wants sent. ``kind`` selects the rate limit: read or write."""

    method: str
    path: str  # appended to the base URL; starts with "/"
    params: Sequence[tuple[str, str]] | Mapping[str, str] | None = None
    json: Any = None
    headers: Mapping[str, str] | None = None
    kind: str = "write"
    content_type: str = "application/json"
    _body: bytes | None = field(default=None, repr=False)

    def body(self) -> bytes | None:
        """The encoded body, computed once so every retry sends the same bytes."""
        if self._body is None and self.json is not None:
            self._body = _orjson_dumps(self.json, default=_default)  # dumps(), one call fewer
        return self._body


@dataclass(slots=True)
class Reply:
    status: int
    headers: Mapping[str, str]
    content: bytes
    _data: Any = field(default=None, repr=False)

    def json(self) -> Any:
        """Parsed body (orjson; floats for JSON numbers). None for an empty or non-JSON body."""
        if self._data is None and self.content:
            try:
                self._data = orjson.loads(self.content)
            except orjson.JSONDecodeError:
                self._data = None
        return self._data

    def text(self, limit: int = 300) -> str:
        return self.content[:limit].decode("utf-8", "replace")


def write_request(path: str, json: Any, headers: Mapping[str, str]) -> Request:
    """``Request("POST", path, None, json, headers)``: a JSON write, for a target's per-record
    create (a function call, where calling the class packs its arguments first)."""
    req = _new_object(Request)
    req.method, req.path, req.params, req.json, req.headers = "POST", path, None, json, headers
    req.kind, req.content_type, req._body = "write", "application/json", None
    return req


def _new_reply(status: int, headers: Mapping[str, str], content: bytes) -> Reply:
    """``Reply(status, headers, content)`` for the transport, once per answer: a function call,
    where calling the class builds an argument tuple and looks its ``__init__`` up first."""
    reply = _new_object(Reply)
    reply.status, reply.headers, reply.content, reply._data = status, headers, content, None
    return reply


_new_object = object.__new__
