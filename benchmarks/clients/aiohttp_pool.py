"""Baseline: a bare, minimal aiohttp loop with a worker pool: the ceiling for a Python client.

N workers pull lines from one shared file iterator (single-threaded asyncio: no lock needed),
so nothing is queued, buffered or tracked beyond what sending needs. ``--uvloop`` runs the
same loop on uvloop (shown as its own row, so ``bulk``'s use of uvloop is not hidden).
"""

from __future__ import annotations

import asyncio

import aiohttp
import orjson

from benchmarks.clients.common import (
    CONTACTS,
    INVOICES,
    Result,
    contact_request,
    headers,
    lines,
    request_parts,
    retry_after,
)
from benchmarks.clients.options import Options, run_async


async def run(args: Options) -> None:
    base = args.base_url
    result = Result()
    contacts: dict[str, asyncio.Future[int]] = {}
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    async with aiohttp.ClientSession(connector=connector, headers=headers(args.token)) as session:
        out = open(args.out, "w")  # noqa: ASYNC230, SIM115 - one file for the whole run, closed at its end

        async def call(method: str, path: str, **kw: object) -> tuple[int, bytes]:
            while True:
                result.requests += 1
                async with session.request(method, base + path, **kw) as r:  # type: ignore[arg-type]
                    content = await r.read()
                    if r.status != 429:
                        return r.status, content
                    wait = retry_after(r.headers.get("Retry-After"))
                result.throttled += 1
                await asyncio.sleep(wait)

        async def contact(rec: dict) -> int:  # type: ignore[type-arg]
            _, content = await call("GET", CONTACTS, params={"email": rec["customer"]["email"]})
            found = orjson.loads(content)["data"]
            if found:
                return int(found[0]["id"])
            body, hdrs = contact_request(rec)
            _, content = await call("POST", CONTACTS, data=body, headers=hdrs)
            return int(orjson.loads(content)["data"]["id"])

        it = lines(args.input)

        async def worker() -> None:
            for line in it:
                rec = orjson.loads(line)
                key = rec["customer"]["external_id"]
                fut = contacts.get(key)
                if fut is None:
                    fut = contacts[key] = asyncio.ensure_future(contact(rec))
                contact_id = await fut
                ext, body, hdrs = request_parts(rec, contact_id)
                status, content = await call("POST", INVOICES, data=body, headers=hdrs)
                if status in (200, 201):
                    out.write(f"{ext},{orjson.loads(content)['data']['id']}\n")
                    result.created += 1
                else:
                    result.failed += 1

        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        out.close()
    result.emit()


if __name__ == "__main__":
    run_async(run, __doc__ or "")
