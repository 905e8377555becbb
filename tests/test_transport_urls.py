"""The transport parses each request path's URL once and reuses it: what goes on the wire is
byte for byte what aiohttp sends for the same URL text (requoting, a query in the path, params),
and a URL aiohttp cannot parse is still reported as a TransportError (real sockets, no mocks)."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager

import aiohttp
import anyio
import pytest
from support.raw_http import answering_server

from bulk.errors import TransportError
from bulk.transport import Request, Transport

# (path, params): requoting, an already-encoded escape, a query in the path, params (a "+" and
# an "@" to encode), both at once
CASES: list[tuple[str, Sequence[tuple[str, str]] | dict[str, str] | None]] = [
    ("/public/v1/invoices", None),
    ("/a b/ü/%41%2F", None),
    ("/customer?limit=1", None),
    ("/public/v1/contacts", {"email": "a+b@x.com"}),
    ("/accounts?x=1", [("o", "org 1"), ("q", "é&=")]),
]


def recording_server(seen: list[bytes]) -> AbstractAsyncContextManager[str]:
    """Answers 200 to every request on a connection; ``seen`` gets each request line."""
    return answering_server(lambda line, _fields, _body: seen.append(line))


def test_the_request_line_is_aiohttps_own_for_the_same_text_first_and_cached() -> None:
    async def main() -> tuple[list[bytes], list[bytes]]:
        ours: list[bytes] = []
        plain: list[bytes] = []
        async with recording_server(ours) as base, Transport(base, headers={}, timeout=5, connections=1) as t:
            for _ in range(2):  # the second round is sent from the parsed-URL cache
                for path, params in CASES:
                    assert (await t.send(Request("GET", path, params=params, kind="read"))).status == 200
        async with recording_server(plain) as base, aiohttp.ClientSession() as s:
            for path, params in CASES:
                async with s.get(base + path, params=params, allow_redirects=False) as r:
                    await r.read()
        return ours, plain

    ours, plain = anyio.run(main)
    assert len(plain) == len(CASES) and ours == plain + plain
    assert plain[1].startswith(b"GET /a%20b/%C3%BC/A%2F ") and b"email=a%2Bb@x.com" in plain[3]


def test_a_path_per_record_is_sent_right_past_the_cache_size() -> None:
    async def main() -> list[bytes]:
        seen: list[bytes] = []
        async with recording_server(seen) as base, Transport(base, headers={}, timeout=5, connections=2) as t:
            for i in range(300):  # more distinct paths than the transport keeps parsed
                await t.send(Request("GET", f"/invoices/{i}", kind="read"))
            await t.send(Request("GET", "/invoices/299", kind="read"))
            await t.send(Request("GET", "/invoices/0", kind="read"))
        return seen

    seen = anyio.run(main)
    assert seen == [f"GET /invoices/{i} HTTP/1.1".encode() for i in [*range(300), 299, 0]]


def test_a_url_aiohttp_cannot_parse_is_still_a_transport_error() -> None:
    async def main() -> None:
        async with Transport("http://[::1", headers={}, timeout=2, connections=1) as t:
            await t.send(Request("GET", "/x", kind="read"))

    with pytest.raises(TransportError) as info:
        anyio.run(main)
    assert "InvalidUrlClientError" in str(info.value)
