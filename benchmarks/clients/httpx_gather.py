"""Baseline: ``httpx.AsyncClient`` with a semaphore and ``asyncio.gather`` (in chunks of 10,000
lines, so a large file does not become a million pending coroutines at once)."""

from __future__ import annotations

import asyncio
import itertools

import httpx
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

CHUNK = 10_000


async def run(args: Options) -> None:
    result = Result()
    sem = asyncio.Semaphore(args.concurrency)
    contacts: dict[str, asyncio.Task[int]] = {}
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    async with httpx.AsyncClient(base_url=args.base_url, headers=headers(args.token), limits=limits,
                                 timeout=30.0) as client:
        out = open(args.out, "w")  # noqa: ASYNC230, SIM115 - buffered appends, like a script would

        async def call(method: str, path: str, **kw: object) -> httpx.Response:
            while True:
                result.requests += 1
                r = await client.request(method, path, **kw)  # type: ignore[arg-type]
                if r.status_code != 429:
                    return r
                result.throttled += 1
                await asyncio.sleep(retry_after(r.headers.get("Retry-After")))

        async def contact(rec: dict) -> int:  # type: ignore[type-arg]
            found = (await call("GET", CONTACTS, params={"email": rec["customer"]["email"]})).json()["data"]
            if found:
                return int(found[0]["id"])
            body, hdrs = contact_request(rec)
            return int((await call("POST", CONTACTS, content=body, headers=hdrs)).json()["data"]["id"])

        async def one(line: bytes) -> None:
            async with sem:
                rec = orjson.loads(line)
                key = rec["customer"]["external_id"]
                task = contacts.get(key)
                if task is None:
                    task = contacts[key] = asyncio.ensure_future(contact(rec))
                contact_id = await task
                ext, body, hdrs = request_parts(rec, contact_id)
                r = await call("POST", INVOICES, content=body, headers=hdrs)
                if r.status_code in (200, 201):
                    out.write(f"{ext},{r.json()['data']['id']}\n")
                    result.created += 1
                else:
                    result.failed += 1

        it = lines(args.input)
        while chunk := list(itertools.islice(it, CHUNK)):
            await asyncio.gather(*(one(line) for line in chunk))
        out.close()
    result.emit()


if __name__ == "__main__":
    run_async(run, __doc__ or "")
