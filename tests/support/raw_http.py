"""A raw HTTP/1.1 test server for the transport's wire tests (not a target's support module):
it answers ``200 {}`` to every request and hands each one to the test as it arrived on the
socket, so a test compares bytes, not what a server framework parsed. Real sockets, 127.0.0.1:0.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

__all__ = ["answering_server"]


@asynccontextmanager
async def answering_server(seen: Callable[[bytes, list[bytes], bytes], None]) -> AsyncIterator[str]:
    """Its base URL, while it answers ``200 {}`` to every request on every connection (keep-alive);
    ``seen(request line, header lines as sent, body)`` is called for each request, the body read
    by its Content-Length (none: empty). A connection ends when the client closes it."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line, *fields = (await reader.readuntil(b"\r\n\r\n"))[:-4].split(b"\r\n")
                length = next((int(f.split(b":", 1)[1]) for f in fields if f.lower().startswith(b"content-length:")), 0)
                seen(line, fields, await reader.readexactly(length))
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
