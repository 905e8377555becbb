"""``--seed-from INPUT``: a sandbox that starts holding what an export references.

A user's own export names customers, SKUs and currencies the built-in seed does not hold
(``SKU-0283``, ``CUST-A17``). Seeded from the file, the sandbox holds them before the first
request, so the export rehearses end to end with no hand-made ``--option items=...``:

- ChargeOver: an item per ``lines[].item_ref`` and a currency per ``currency`` (added to the
  default catalogue and currencies): options ``seed_items``, ``seed_currencies``.
- Coperniq: a catalog item per SKU (``seed_skus``), and per customer the record its invoices
  go to (``seed_accounts``): an account titled by ``customer.external_id``, or, when a record
  gives ``extra.recordId``, an account with that id.
- Agiled and anny: nothing. Their customers are found or created by ``bulk`` itself and their
  invoice lines are free text (no catalogue), and any ISO currency is taken.

``leave_out`` drops the kinds a run creates itself (``customers``, ``items``: the
``--create-missing`` it rehearses), so the rehearsal exercises the creating, not the seed.

In a run (the embedded sandbox) the file is read in a daemon thread (:func:`references`): a
200,000-line export held the event loop, and with it a Ctrl-C, for 4.19 s.

The file is read here with this module's own minimal reading (one JSON object per line,
``.gz`` by its name; a line that is not an object, or a field of the wrong type, is skipped:
the client's validation reports it, not the sandbox). It shares no code with ``bulk``'s
client-side record parsing, as a simulator must not.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = ["SEEDED", "References", "read_references", "references", "seed_options"]

SEEDED = ("chargeover", "coperniq")  # the dialects that take a seed from the input

_MAX_KEY = 200  # longer values are not plausible keys: left to the client's validation
#: lines read between two calls of read_references' ``check`` (references: was it cancelled?)
CHUNK = 4096


@dataclass(slots=True)
class References:
    """What an input references, in the order first seen."""

    customers: dict[str, int | None] = field(default_factory=dict)  # external id -> recordId
    items: dict[str, None] = field(default_factory=dict)
    currencies: dict[str, None] = field(default_factory=dict)


def _lines(path: str) -> Iterator[bytes]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        yield from f


def _key(value: Any) -> str | None:
    return value if isinstance(value, str) and 0 < len(value) <= _MAX_KEY else None


class _Stopped(Exception):
    """Raised in the reading thread by its ``check`` once the awaiting task is gone."""


async def references(path: str) -> References:
    """:func:`read_references` in a daemon thread, the event loop free meanwhile (its signals
    handled at once). Cancelled, it returns at once, and the thread stops within ``CHUNK``
    lines; a thread blocked on a read that never ends (a FIFO its writer holds open, a stuck
    mount) does not keep the process alive, as anyio's worker threads (not daemons) would."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[References] = loop.create_future()
    gone = threading.Event()

    def check() -> None:
        if gone.is_set():
            raise _Stopped

    def settle(outcome: References | BaseException) -> None:
        if done.done():
            return
        if isinstance(outcome, BaseException):
            done.set_exception(outcome)
        else:
            done.set_result(outcome)

    def read() -> None:
        outcome: References | BaseException
        try:
            outcome = read_references(path, check)
        except _Stopped:
            return
        except BaseException as exc:  # OSError, or anything else: the awaiting task raises it
            outcome = exc
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(settle, outcome)

    threading.Thread(target=read, name="bulk-seed-read", daemon=True).start()
    try:
        return await done
    finally:
        gone.set()


def read_references(path: str, check: Callable[[], None] | None = None) -> References:
    """The customers, item refs and currencies ``path`` references (OSError if unreadable).
    ``check``, when given, is called every ``CHUNK`` lines: what it raises stops the reading."""
    refs = References()
    countdown = CHUNK
    for raw in _lines(path):
        if check is not None:
            countdown -= 1
            if not countdown:
                countdown = CHUNK
                check()
        try:
            doc = json.loads(raw.lstrip(b"\xef\xbb\xbf"))
        except ValueError:
            continue
        if not isinstance(doc, dict):
            continue
        customer = doc.get("customer")
        cid = _key(customer.get("external_id")) if isinstance(customer, dict) else None
        if cid is not None:
            extra = doc.get("extra")
            record_id = extra.get("recordId") if isinstance(extra, dict) else None
            if isinstance(record_id, str) and record_id.isascii() and record_id.isdigit():
                record_id = int(record_id)
            if type(record_id) is not int or not 1 <= record_id < 2**31:
                record_id = None
            if refs.customers.get(cid) is None:
                refs.customers[cid] = record_id
        currency = _key(doc.get("currency"))
        if currency is not None and len(currency) == 3:
            refs.currencies[currency.upper()] = None
        lines = doc.get("lines")
        for line in lines if isinstance(lines, list) else ():
            ref = _key(line.get("item_ref")) if isinstance(line, dict) else None
            if ref is not None:
                refs.items[ref] = None
    return refs


def seed_options(dialect: str, refs: References, *, leave_out: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The dialect options that seed ``refs`` (merged over its other options)."""
    items = [] if "items" in leave_out else list(refs.items)
    if dialect == "chargeover":
        return {"seed_items": items, "seed_currencies": list(refs.currencies)}
    if dialect == "coperniq":
        # A record's own extra.recordId says its account exists: seeded even when customers
        # are left out (bulk creates only the accounts it finds by title).
        accounts = [[title, record_id] for title, record_id in refs.customers.items()
                    if record_id is not None or "customers" not in leave_out]
        return {"seed_skus": items, "seed_accounts": accounts}
    return {}
