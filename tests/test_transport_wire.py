"""What the transport sends is what plain aiohttp sends for the same request: the same header
set (names, values, no duplicate Content-Type) and the same body bytes, for a request with its
own Content-Type, one without (the transport adds the request's ``content_type``), one without
headers at all, and a GET without a body (real sockets, no mocks)."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager

import aiohttp
import anyio
from support.raw_http import answering_server

from bulk.transport import Request, Transport

SESSION = {"Authorization": "Bearer t0ken", "Accept": "application/json"}
CASES: list[Request] = [
    Request("POST", "/invoices", json={"a": "1.50"},
            headers={"Idempotency-Key": "k1", "Content-Type": "application/json"}),
    Request("POST", "/invoices", json={"a": 1}, headers={"Idempotency-Key": "k2"},
            content_type="application/vnd.api+json"),
    Request("PUT", "/invoices/1", json=[1, 2]),
    Request("GET", "/contacts", params={"email": "a@b.c"}, kind="read"),
]


def capturing_server(seen: list[tuple[bytes, list[bytes], bytes]]) -> AbstractAsyncContextManager[str]:
    """Answers 200 to every request; ``seen`` gets (request line, sorted header lines, body)."""

    def record(line: bytes, fields: list[bytes], body: bytes) -> None:
        # the Host line names each server's own port: kept as its name only
        fields = [b"host:" if f.lower().startswith(b"host:") else f.lower() for f in fields]
        seen.append((line, sorted(fields), body))

    return answering_server(record)


def test_headers_and_body_on_the_wire_are_plain_aiohttps() -> None:
    async def main() -> tuple[list[tuple[bytes, list[bytes], bytes]], list[tuple[bytes, list[bytes], bytes]]]:
        ours: list[tuple[bytes, list[bytes], bytes]] = []
        plain: list[tuple[bytes, list[bytes], bytes]] = []
        async with capturing_server(ours) as base, Transport(base, headers=SESSION, timeout=5, connections=1) as t:
            for req in CASES:
                assert (await t.send(req)).status == 200
        async with capturing_server(plain) as base, aiohttp.ClientSession(headers=SESSION) as s:
            for req in CASES:
                body = req.body()
                headers = dict(req.headers or {})
                if body is not None:
                    headers.setdefault("Content-Type", req.content_type)
                async with s.request(req.method, base + req.path, params=req.params, data=body,
                                     headers=headers, allow_redirects=False) as r:
                    assert r.status == 200
        return ours, plain

    ours, plain = anyio.run(main)
    assert len(ours) == len(CASES) and ours == plain
    # the request's content type, once, whether it came in its headers or as content_type
    assert [sum(f.startswith(b"content-type:") for f in fields) for _, fields, _ in ours] == [1, 1, 1, 0]
    assert b"content-type: application/vnd.api+json" in ours[1][1]
    assert ours[0][2] == b'{"a":"1.50"}'
