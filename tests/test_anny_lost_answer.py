"""anny: a create whose answer was lost WITHIN a run, and that is still on its way.

anny has no idempotency keys. A create that got no answer (``--timeout`` passed) may still
land: bulk looks it up only once ``--option settle`` seconds have passed since it gave up on it
(bulk.targets.anny, "Lost answers within a run"), then finds it or sends it again. Here the
hostile proxy (tests/hostile_proxy.py) holds the create, notices the moment the client closes
the held request's connection (it gave up), and lets the request land ``d`` seconds later, ``d``
drawn from the seed in [0.25, 0.5) x settle: inside the window. A client that looked up at
once (after its backoff of at most 0.2 s) found nothing, sent the create again, and the late
one made a duplicate customer, or an extra item (which the draft check turns into a failed
record). The audit is at the server: one customer per e-mail, one invoice per record, the
record's items exactly, and bulk exits 0 with every record created.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import pytest
from anny_audit import exactly_once_problems
from harness import SandboxServer, start_cli, stop, upload_args, wait_until
from hostile_proxy import HostileProxy

SETTLE = 2.0  # bulk's window (--option settle); the late request lands inside it


def _record(number: int, email: str) -> dict[str, Any]:
    return {"external_id": f"AN-{number}", "currency": "EUR", "status": "sent", "prices": "net",
            "issue_date": "2026-03-01",
            "customer": {"external_id": f"C-{email}", "email": email, "name": f"Person {number}", "locale": "de"},
            "lines": [{"title": f"Line {number}.{i}", "quantity": 1 + i, "unit_price": "10.50", "tax_rate": "19"}
                      for i in range(2)]}


def _lost_answer_lands_late(tmp_path: Path, records: list[dict[str, Any]], hold: Any, looks_up: Any,
                            seed: int, then_hold: Any = None) -> None:
    """Run bulk with the first request ``hold`` matches held until ``d`` s after bulk gave up
    on it, or until the server answered a look-up of its object (a request whose proxy
    identity, "METHOD path?query body-hash", ``looks_up`` matches) if that comes first: the
    late request then lands right after a client that looked too early (its worst moment).
    A request ``then_hold`` matches waits at the proxy until the held one landed."""
    src, out = tmp_path / "in.ndjson", tmp_path / "run"
    src.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in records))
    d = random.Random(seed).uniform(0.25, 0.5) * SETTLE  # a correct client looks >= SETTLE after: margin >= SETTLE / 2
    with SandboxServer("anny", seed=seed) as sb, HostileProxy(sb.base_url, seed=seed, rates={}) as px:
        args = upload_args(sb, src, out, "--concurrency", "2", "--timeout", "1", "--retries", "3",
                           "--option", f"settle={SETTLE}", via=px)
        held = px.hold_when(hold)
        after = px.hold_when(then_hold) if then_hold is not None else None
        proc = start_cli(args, sb.env)
        try:
            wait_until(lambda: held.abandoned.is_set() or proc.poll() is not None, timeout=60, interval=0.005,
                       what="the client giving up on the held request")
            assert proc.poll() is None, proc.communicate()
            gave_up = time.monotonic()

            def looked_up() -> bool:
                answered = set(px.answered())
                return any(n > held.number and n in answered and looks_up(identity)
                           for n, _, identity, _, _ in list(px.journal))

            early = False  # the adversary's move: d s after the client gave up, or right after its look-up
            while time.monotonic() < gave_up + d and not (early := looked_up()):
                time.sleep(0.005)
            held.release()
            if after is not None:
                wait_until(lambda: held.number in px.answered(), timeout=30, interval=0.005,
                           what="the held request's landing")
                after.release()
            _, stderr = proc.communicate(timeout=120)
        finally:
            stop(proc)
        px.drain()
        problems = exactly_once_problems(sb.state(), out, records)
    # a look-up inside the window came before the late request: the client did not wait
    assert (problems, proc.returncode, early) == ([], 0, False), (problems, d, stderr)


@pytest.mark.parametrize("seed", [7, 11])
def test_a_customer_create_whose_answer_was_lost_is_looked_up_after_the_settle_window(
        seed: int, tmp_path: Path) -> None:
    """ada's customer create is held past ``--timeout 1`` and lands d s after bulk gave up:
    bulk's look-up comes after it, finds it, and makes no second customer."""
    records = [_record(1, "ada@example.com"), _record(2, "bob@example.com")]
    _lost_answer_lands_late(
        tmp_path, records, lambda m, p, b: m == "POST" and p.endswith("/customers") and b"ada@example.com" in b,
        lambda i: i.startswith("GET /api/v1/customers?") and "ada@" in i, seed)


def test_an_item_create_whose_answer_was_lost_is_looked_up_after_the_settle_window(tmp_path: Path) -> None:
    """AN-1's first item create is held past ``--timeout 1`` and lands d s after bulk gave up;
    AN-1's ``send`` waits at the proxy until it landed (after ``send`` anny refuses items, so
    this is the late item's worst moment: a client that re-created the item sends an invoice
    with one item too many, and fails the record). bulk's read of the invoice comes after the
    landing and finds the item: no extra item, AN-1 is sent."""
    records = [_record(1, "ada@example.com")]
    _lost_answer_lands_late(tmp_path, records, lambda m, p, b: m == "POST" and p.endswith("/items"),
                            lambda i: i.startswith("GET /api/v1/invoices/"), 7,
                            then_hold=lambda m, p, b: m == "POST" and p.endswith("/send"))
