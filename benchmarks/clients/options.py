"""The command line every baseline client takes, parsed in one place, and how it is started.

``benchmarks/run.py`` starts each client as ``python -m benchmarks.clients.NAME INPUT
--base-url URL --out FILE --token T --concurrency N [--uvloop]``. :func:`parse` reads that
into :class:`Options`; :func:`run_async` runs an asyncio client on stock asyncio, or on uvloop
with ``--uvloop`` (shown as its own row, so ``bulk``'s use of uvloop is not hidden).
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Options:
    """One client run's settings."""

    input: str  # NDJSON invoices
    base_url: str  # without a trailing slash
    out: str  # file for the external_id,id lines
    concurrency: int
    token: str
    uvloop: bool


def parse(description: str, argv: Sequence[str] | None = None) -> Options:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("input", help="NDJSON invoices")
    p.add_argument("--base-url", required=True)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--token", default="bench-token")
    p.add_argument("--out", required=True, help="file for the external_id,id lines")
    p.add_argument("--uvloop", action="store_true", help="run on uvloop instead of stock asyncio")
    a = p.parse_args(argv)
    return Options(input=a.input, base_url=a.base_url.rstrip("/"), out=a.out, concurrency=a.concurrency,
                   token=a.token, uvloop=a.uvloop)


def run_async(client: Callable[[Options], Coroutine[Any, Any, None]], description: str) -> None:
    """Parse the command line and run ``client(options)`` to its end on the chosen event loop."""
    options = parse(description)
    if options.uvloop:
        import uvloop  # only when asked: the stock-asyncio rows must not need it

        uvloop.run(client(options))
    else:
        asyncio.run(client(options))
