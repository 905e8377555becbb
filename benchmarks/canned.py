"""A minimal canned-answer HTTP/1.1 server in Python: the fallback when nginx is not installed.

It answers the three Agiled routes the benchmark clients call with fixed bodies (the same as
the nginx configuration in :mod:`benchmarks.servers`), keeps connections alive, reads
``Content-Length`` bodies, and can delay every answer (``--latency-ms``) without blocking
others. One asyncio process: at a few thousand requests per second it may itself become the
bottleneck, which the harness reports (server CPU column). Run as
``python -m benchmarks.canned --port 0``; it prints ``listening on PORT`` when ready.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

ME = b'{"data":{"id":1,"name":"bench"}}'
CONTACTS = b'{"data":[{"id":1}]}'
INVOICE = b'{"data":{"id":1,"status":"draft","total":null}}'
NOT_FOUND = b'{"error":"Not Found."}'


def _answer(status: str, body: bytes) -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: keep-alive\r\n\r\n").encode() + body


_ROUTES = {
    b"/public/v1/me": _answer("200 OK", ME),
    b"/public/v1/contacts": _answer("200 OK", CONTACTS),
    b"/public/v1/invoices": _answer("201 Created", INVOICE),
}
_404 = _answer("404 Not Found", NOT_FOUND)


class _Protocol(asyncio.Protocol):
    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end]
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(self.buf) < end + 4 + length:
                return
            self.buf = self.buf[end + 4 + length:]
            target = head.split(b" ", 2)[1]
            answer = _ROUTES.get(target.split(b"?", 1)[0], _404)
            if self.latency:
                asyncio.get_running_loop().call_later(self.latency, self._send, answer)
            else:
                self._send(answer)

    def _send(self, answer: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(answer)


async def serve(port: int, latency_ms: float) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Protocol(latency_ms / 1000), "127.0.0.1", port, backlog=4096)
    print(f"listening on {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--latency-ms", type=float, default=0)
    args = p.parse_args()
    try:
        asyncio.run(serve(args.port, args.latency_ms))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
