"""The API's own words reach failed_reasons.csv, per target (issue 10): its HTTP status, the
field it names and its message, for each API's error shape (Agiled's Laravel ``errors`` dict,
anny's JSON:API ``source.pointer``, ChargeOver's envelope message that leads with the field,
Coperniq's ``{"message", "field"}``).

And a cached id the API no longer knows is resolved again once: a customer resolved by a
run that was then killed is deleted at the sandbox (``POST /_sandbox/delete``) before the
resume; the resumed run's create is refused as naming an unknown id, the engine forgets the
cached id (memory and resume file), resolves the customer afresh and creates the invoice.
The kill is triggered by progress, not time: a proxy (tests/hostile_proxy.py) stops the first
run's invoice creates at a gate; once one waits there and the customer is checkpointed, the
run is killed and the gate dropped, so none of that run's invoices reaches the server.
"""

from __future__ import annotations

import copy
import json
import sqlite3
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from harness import (
    SandboxServer,
    cli,
    in_flight,
    kill_when,
    read_id_map,
    read_reasons,
    summary,
    support,
    upload_args,
    wait_until,
)
from hostile_proxy import HostileProxy

import bulk.targets
from bulk.generate import generate


def _refused_by_the_api(target: str, doc: dict[str, Any]) -> tuple[dict[str, Any], int, str, str]:
    """A record only the API refuses, and the (status, field, message part) it must be reported with."""
    bad = copy.deepcopy(doc)
    if target == "agiled":
        bad["issue_date"], bad["due_date"] = "2026-05-10", "2026-05-01"
        return bad, 422, "due_date", "The due date must be a date after or equal to issue date."
    if target == "anny":
        bad["customer"]["external_id"] = "CUST-REFUSED"
        bad["customer"]["email"] = "jane..doe@example.com"
        return bad, 422, "/data/attributes/email", "email"
    if target == "chargeover":
        bad["extra"] = {"paycycle": "fortnightly-ish"}
        return bad, 400, "paycycle", "is not a valid payment cycle"
    bad["extra"] = {**(bad.get("extra") or {}), "recordId": 999_999}
    return bad, 400, "recordId", "Record 999999 not found"


@pytest.mark.parametrize("target", bulk.targets.names())
def test_failed_reasons_keep_the_apis_status_field_and_message(target: str, tmp_path: Path) -> None:
    docs = [json.loads(line) for line in generate(4, seed=801)]
    docs[2], status, field, message = _refused_by_the_api(target, docs[2])
    src, out = tmp_path / "in.ndjson", tmp_path / "run"
    src.write_bytes(b"".join(json.dumps(d).encode() + b"\n" for d in docs))
    with SandboxServer(target) as sb:
        done = cli(upload_args(sb, src, out), sb.env)
    assert done.returncode == 1, done.stderr
    reasons = read_reasons(out)
    assert len(reasons) == 1, reasons
    row = reasons[0]
    assert (row["line"], row["kind"], row["http_status"]) == ("3", "failed", str(status)), row
    assert row["field"] == field, row
    assert message in row["message"], row
    assert summary(out)["records"]["created"] == 3


# --- stale cached ids ---------------------------------------------------------------------------------------------

# target -> (resolve namespace of the customer, sandbox collection, how the state names the
# invoice's customer, recreate: the customer comes back under a new id instead of the client
# creating it again)
STALE = {
    "agiled": ("agiled.contact", "contacts", "contact_id", False),
    "anny": ("anny.customer:", "customers", "customer_id", False),
    "chargeover": ("chargeover.customer", "customers", "customer_id", False),
    # Coperniq's client never creates accounts: it finds them by title; the user made it again.
    "coperniq": ("coperniq.record", "accounts", "record", True),
}


def _creates_an_invoice(method: str, path: str, body: bytes) -> bool:
    """Whether a request creates an invoice: ``POST .../invoices``, or a ChargeOver ``_bulk``
    carrying a ``POST /api/v3/invoice``."""
    if method != "POST":
        return False
    if path.endswith("/_bulk"):
        try:
            subs = json.loads(body)
        except ValueError:
            return False
        return any(sub.get("request_method") == "POST" and sub.get("uri") == "/api/v3/invoice" for sub in subs)
    return path.rstrip("/").endswith("/invoices")


def _post(sb: SandboxServer, path: str, body: Any) -> Any:
    req = urllib.request.Request(sb.base_url + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def _resolved(out: Path, ns: str) -> dict[str, str]:
    path = out / "state.db"
    if not path.exists():
        return {}
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return dict(db.execute("SELECT k, v FROM resolved WHERE ns LIKE ?", (ns + "%",)).fetchall())
    except sqlite3.Error:
        return {}
    finally:
        db.close()


@pytest.mark.parametrize("target", sorted(STALE))
def test_a_cached_customer_the_api_no_longer_knows_is_resolved_again(target: str, tmp_path: Path) -> None:
    ns, collection, link, recreate = STALE[target]
    docs = [json.loads(line) for line in generate(3, seed=802)]
    for d in docs[1:]:
        d["customer"] = copy.deepcopy(docs[0]["customer"])  # one customer for all three
    src, out = tmp_path / "in.ndjson", tmp_path / "run"
    src.write_bytes(b"".join(json.dumps(d).encode() + b"\n" for d in docs))
    invoices = support(target).invoices
    with SandboxServer(target) as sb, HostileProxy(sb.base_url, seed=802, rates={}) as proxy:
        args = upload_args(sb, src, out, "--checkpoint-every", "0.02", "--concurrency", "1", via=proxy)
        if target == "coperniq":  # find the account by title, not through the record map
            args = [a for a in args if not a.startswith("record_map=")]
            args = [a for i, a in enumerate(args) if not (a == "--option" and args[i + 1].startswith("--"))]
        # The first run's invoice creates stop at the gate: it cannot end (it waits for that
        # answer), and none of them reaches the server, before or after the kill.
        gate = proxy.gate(_creates_an_invoice)
        kill_when(sb, args, lambda: gate.reached.is_set() and bool(_resolved(out, ns)),
                  what="an invoice create at the gate, the customer checkpointed")
        gate.drop()
        proxy.drain()  # everything the killed run sent has landed (or was dropped)
        wait_until(lambda: in_flight(sb) == 0, timeout=30, what="no request in flight at the sandbox")
        assert gate.stopped >= 1
        assert not invoices(sb.state()), "an invoice was made before the kill: the test proves nothing"
        (stale,) = _resolved(out, ns).values()
        moved = _post(sb, "/_sandbox/delete", {"collection": collection, "id": int(stale) if stale.isdigit() else stale,
                                                   "recreate": recreate})
        done = cli(args, sb.env)
        assert done.returncode == 0, done.stderr
        state = sb.state()
        made = invoices(state)
        assert sorted(inv["external_id"] for inv in made) == sorted(d["external_id"] for d in docs)
    fresh = _resolved(out, ns)
    (fresh_id,) = fresh.values()
    assert fresh_id != stale, "the stale id is still cached in the resume file"
    if recreate:
        assert fresh_id == str(moved["new_id"])
    raw = {str(inv[link]) for inv in _server_invoices(target, state)}
    assert raw == {fresh_id}, f"invoices link {raw}, the fresh customer is {fresh_id}"
    assert {row["customer_id"] for row in read_id_map(out)} == {fresh_id}
    assert not read_reasons(out)
    s = summary(out)["records"]
    assert (s["created"], s["failed"], s["rejected"], s["uncertain"]) == (3, 0, 0, 0), s


def _server_invoices(target: str, state: dict[str, Any]) -> list[dict[str, Any]]:
    if target == "coperniq":  # the record the invoice belongs to
        return [{"record": inv["record"]["id"]} for inv in state["invoices"]]
    return list(state["invoices"])
