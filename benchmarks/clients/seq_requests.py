"""Baseline: a sequential ``requests.Session`` loop, what a typical migration script is."""

from __future__ import annotations

import time

import orjson
import requests

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
from benchmarks.clients.options import Options, parse


def main(args: Options) -> None:
    base = args.base_url
    result = Result()
    contacts: dict[str, int] = {}
    with requests.Session() as s, open(args.out, "w") as out:
        s.headers.update(headers(args.token))

        def call(method: str, path: str, **kw: object) -> requests.Response:
            while True:
                result.requests += 1
                r = s.request(method, base + path, **kw)  # type: ignore[arg-type]
                if r.status_code != 429:
                    return r
                result.throttled += 1
                time.sleep(retry_after(r.headers.get("Retry-After")))

        for line in lines(args.input):
            rec = orjson.loads(line)
            cust = rec["customer"]
            contact_id = contacts.get(cust["external_id"])
            if contact_id is None:
                found = call("GET", CONTACTS, params={"email": cust["email"]}).json()["data"]
                if found:
                    contact_id = found[0]["id"]
                else:
                    body, hdrs = contact_request(rec)
                    contact_id = call("POST", CONTACTS, data=body, headers=hdrs).json()["data"]["id"]
                contacts[cust["external_id"]] = contact_id
            ext, body, hdrs = request_parts(rec, contact_id)
            r = call("POST", INVOICES, data=body, headers=hdrs)
            if r.status_code == 201 or r.status_code == 200:
                out.write(f"{ext},{r.json()['data']['id']}\n")
                result.created += 1
            else:
                result.failed += 1
    result.emit()


if __name__ == "__main__":
    main(parse(__doc__ or ""))
