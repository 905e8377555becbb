"""Foreign errors are translated at the HTTP boundary: no aiohttp/OS exception escapes, and
each says whether the request may have reached the server (real sockets, no mocks)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from decimal import Decimal

import anyio
import orjson
import pytest

from bulk.errors import TransportError
from bulk.transport import Request, Transport, dumps


@asynccontextmanager
async def raw_server(handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
                     ) -> AsyncIterator[str]:
    writers: list[asyncio.StreamWriter] = []
    tasks: list[asyncio.Task[None]] = []

    async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        tasks.append(asyncio.current_task())  # type: ignore[arg-type]
        await handle(reader, writer)

    server = await asyncio.start_server(tracked, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        for writer in writers:
            writer.close()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


# ASYNC109: `timeout` configures the Transport under test; it does not bound this call
async def _send(base: str, timeout: float = 2.0, secrets: tuple[str, ...] = ()) -> TransportError:  # noqa: ASYNC109
    async with Transport(base, headers={}, timeout=timeout, connections=4, secrets=secrets) as t:
        with pytest.raises(TransportError) as info:
            await t.send(Request("POST", "/x", json={"a": 1}))
        return info.value


def test_connection_refused_surely_did_not_arrive() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound but not listening: refused
        err = anyio.run(_send, f"http://127.0.0.1:{port}")
    assert err.maybe_committed is False and "cannot connect" in str(err)


def test_reset_after_the_request_may_have_committed() -> None:
    async def go() -> TransportError:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.close()  # read the request, answer nothing

        async with raw_server(handle) as base:
            return await _send(base)

    err = anyio.run(go)
    assert err.maybe_committed is True


def test_timeout_may_have_committed_and_never_leaks_a_secret() -> None:
    async def go() -> TransportError:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await asyncio.sleep(5)

        async with raw_server(handle) as base:
            return await _send(base + "/tok-SECRET", timeout=0.3, secrets=("tok-SECRET",))

    err = anyio.run(go)
    assert err.maybe_committed is True and "timed out" in str(err) and "tok-SECRET" not in str(err)


def test_truncated_answer_is_a_transport_error() -> None:
    async def go() -> TransportError:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 201 Created\r\nContent-Length: 100\r\n\r\n{\"id\":")
            await writer.drain()
            writer.close()

        async with raw_server(handle) as base:
            return await _send(base)

    assert anyio.run(go).maybe_committed is True


def test_decimals_are_sent_as_exact_json_numbers() -> None:
    body = dumps({"a": Decimal("0.1000000000000000055511151231257827"), "b": Decimal("1E+3"), "c": Decimal("-0.00")})
    assert body == b'{"a":0.1000000000000000055511151231257827,"b":1000,"c":-0.00}'
    assert orjson.loads(body)["b"] == 1000


def test_a_cookie_the_server_sets_is_never_sent_back() -> None:
    """Every target authenticates by a header: the session keeps no cookie jar, so an answer's
    Set-Cookie (a load balancer's, a session id) never rides along on the next requests."""
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while head := await reader.readuntil(b"\r\n\r\n"):
            seen.append(head)
            writer.write(b"HTTP/1.1 200 OK\r\nSet-Cookie: sid=abc123; Path=/\r\nContent-Length: 2\r\n\r\n{}")
            await writer.drain()
            if len(seen) == 3:
                break

    async def main() -> list[int]:
        # a host name: aiohttp's cookie jar keeps no cookie of a bare IP address
        async with raw_server(handle) as base, Transport(base.replace("127.0.0.1", "localhost"), headers={},
                                                         timeout=5, connections=1) as t:
            return [(await t.send(Request("GET", "/x", kind="read"))).status for _ in range(3)]

    assert anyio.run(main) == [200, 200, 200]
    assert len(seen) == 3 and not any(b"cookie:" in h.lower() for h in seen)
