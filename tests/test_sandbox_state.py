"""The sandbox's durable state (``bulk/sandbox/durable.py``), through the CLI over real sockets.

The README demo: ``bulk upload`` with the embedded sandbox (no ``--base-url``), stopped by
SIGINT or killed by SIGKILL (the sandbox dies with it: it runs in the same process), then the
same command again: exit 0, every record created exactly once, audited in the run directory's
``sandbox.db``. Kills are triggered by progress (rows in ``id_map.csv``); ``--rate`` keeps each
run longer than the trigger needs on any machine (a slower machine only makes it longer).
And ``bulk sandbox --state FILE`` killed and started again keeps what it stored.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import sqlite3
import subprocess
import sys
import urllib.request
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from harness import (
    REPO,
    SECRET,
    SandboxServer,
    assert_counts,
    assert_exactly_once,
    assert_outputs_whole,
    cli,
    client_env,
    free_port,
    read_id_map,
    start_cli,
    stop,
    support,
    wait_until,
    write_input,
)

import bulk.targets
from bulk.embedded import pairing
from bulk.sandbox.config import SandboxConfigError
from bulk.sandbox.durable import DurableStore
from bulk.targets import get_target

TARGETS = bulk.targets.names()  # the registered targets (entry points included)
# Requests per second for the whole run: at least ~3 s of work for 240 invoices at each
# target's requests per invoice (anny ~7, ChargeOver batches 25 per _bulk call).
RATES = {"agiled": "80", "anny": "500", "chargeover": "6", "coperniq": "80"}
RECORDS = 240


def _demo_args(target: str, src: Path, out: Path) -> list[str]:
    """``bulk upload`` with the embedded sandbox: no --base-url, no credentials."""
    return ["upload", str(src), "--target", target, "--out", str(out), "--rate", RATES[target],
            "--quiet", *support(target).EXTRA_ARGS]


def _interrupt_then_resume(target: str, tmp_path: Path, signum: int) -> None:
    src, out = tmp_path / "in.ndjson", tmp_path / "run"
    records = write_input(src, RECORDS, seed=1010)
    args = _demo_args(target, src, out)
    proc = start_cli(args, {})
    try:
        wait_until(lambda: (out / "id_map.csv").exists() and len(read_id_map(out)) >= 10,
                   timeout=120, what="the first rows of the ID map")
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
    finally:
        stop(proc)
    expected = -signal.SIGKILL if signum == signal.SIGKILL else 130
    assert proc.returncode == expected, err
    assert len(read_id_map(out)) < len(records), "the run ended before the signal: nothing was resumed"
    assert (out / "sandbox.db").exists()

    done = cli(args, {}, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"its data in {out / 'sandbox.db'}" in done.stderr
    assert_outputs_whole(out)
    assert_counts(out, records)
    with SandboxServer(target, state=str(out / "sandbox.db")) as sb:  # the persisted API, audited
        assert_exactly_once(sb, out, records)


@pytest.mark.parametrize("target", TARGETS)
def test_embedded_demo_killed_then_resumed_creates_each_invoice_once(target: str, tmp_path: Path) -> None:
    _interrupt_then_resume(target, tmp_path, signal.SIGKILL)


def test_embedded_demo_interrupted_then_resumed_creates_each_invoice_once(tmp_path: Path) -> None:
    _interrupt_then_resume("agiled", tmp_path, signal.SIGINT)


# --- bulk sandbox --state FILE ------------------------------------------------------------------
def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def _start_sandbox(state: Path, port: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-m", "bulk", "sandbox", "--target", "all", "--port", str(port),
                             "--state", str(state)], env=client_env({}), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    line = proc.stderr.readline()  # written once the socket listens
    assert "listening" in line and str(state) in line, line
    return proc


def _stored(state: dict[str, Any]) -> dict[str, Any]:
    """What each dialect stored: its state without the request counters and fault settings."""
    return {name: {k: v for k, v in s.items() if k not in ("requests", "faults", "quota")}
            for name, s in state["targets"].items()}


def test_bulk_sandbox_state_file_survives_a_kill_and_a_restart(tmp_path: Path) -> None:
    state, port = tmp_path / "sandbox.db", free_port()
    url = f"http://127.0.0.1:{port}"
    inputs = {t: write_input(tmp_path / f"{t}.ndjson", 12, seed=1020 + i) for i, t in enumerate(TARGETS)}

    def upload(target: str, out: Path) -> subprocess.CompletedProcess[str]:
        env, _ = pairing(get_target(target)).credentials(SECRET)
        return cli(["upload", str(tmp_path / f"{target}.ndjson"), "--target", target, "--base-url",
                    f"{url}/{target}", "--out", str(out), "--rate", "100000", "--quiet",
                    *support(target).EXTRA_ARGS], env)

    proc = _start_sandbox(state, port)
    try:
        for target in TARGETS:
            done = upload(target, tmp_path / f"run-{target}")
            assert done.returncode == 0, (target, done.stderr)
        before = _stored(_get(f"{url}/_sandbox/state"))
        proc.kill()  # no clean shutdown: what was answered must already be on disk
        proc.wait(timeout=30)
    finally:
        stop(proc)
    for target in TARGETS:
        assert len(support(target).invoices(before[target])) == 12, target

    proc = _start_sandbox(state, port)
    try:
        assert _stored(_get(f"{url}/_sandbox/state")) == before
        # A new job with the same records against the restarted API: its idempotency keys
        # (Agiled), unique numbers (anny) and external keys (ChargeOver) are still known, so
        # nothing is created twice. (Coperniq has no unique key: a new job creates anew there,
        # as it would at the real API.)
        unique = ["agiled", "anny", "chargeover"]
        for target in unique:
            again = upload(target, tmp_path / f"again-{target}")
            assert again.returncode == 0, (target, again.stderr)
        after = _get(f"{url}/_sandbox/state")["targets"]
        for target in unique:
            found = sorted(inv["external_id"] for inv in support(target).invoices(after[target]))
            assert found == sorted(r.external_id for r in inputs[target]), target
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        stop(proc)


# --- the store itself (in-process: its contract at its seam) -------------------------------------
def test_store_keeps_tables_values_and_order_and_saves_what_was_changed_in_place(tmp_path: Path) -> None:
    path = tmp_path / "s.db"

    class Owner:
        counter = 0

    store, owner = DurableStore(path, "x"), Owner()
    assert store.restored is False
    table, order = store.table("t"), store.table("order")
    for key in (3, "b", ("c", 1)):
        table[key] = {"items": [], "amount": 0}
    names = [f"k{i}" for i in range(200, 0, -1)]
    for name in names:  # one flush: still in insertion order in the file
        order[name] = Decimal(name[1:]) / 8
    table[3]["items"].append(1)  # read by key, then changed in place: saved with no further call
    owner.counter = 7
    store.save_values(owner, ["counter"])
    store.flush()
    del table["b"]
    store.flush()
    store.close()

    again, owner2 = DurableStore(path, "x"), Owner()
    assert again.restored is True
    assert list(again.table("t").items()) == [(3, {"items": [1], "amount": 0}), (("c", 1), {"items": [], "amount": 0})]
    assert list(again.table("order").items()) == [(name, Decimal(name[1:]) / 8) for name in names]
    again.restore_values(owner2, ["counter"])
    assert owner2.counter == 7
    assert DurableStore(path, "other").restored is False  # namespaces are apart
    again.wipe()
    assert dict(again.table("t")) == {}
    assert DurableStore(path, "x").restored is False


def test_store_refuses_a_file_that_names_code(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    DurableStore(path, "x").close()
    with sqlite3.connect(path) as db:  # a crafted row: unpickling it would run os.system
        db.execute("INSERT INTO rows VALUES ('x', 't', ?, ?)",
                   (pickle.dumps(1), pickle.dumps(os.system)))
    store = DurableStore(path, "x")
    with pytest.raises(SandboxConfigError, match="unreadable"):
        store.table("t")


def test_bulk_sandbox_refuses_a_state_file_that_is_not_one(tmp_path: Path) -> None:
    bad = tmp_path / "notes.txt"
    bad.write_text("not a database, and it stays as it is\n" * 200)
    done = cli(["sandbox", "--target", "all", "--port", str(free_port()), "--state", str(bad)], {}, timeout=60)
    assert done.returncode == 2, done.stderr
    assert f"sandbox state {bad}" in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert bad.read_text() == "not a database, and it stays as it is\n" * 200


def _api(sb: SandboxServer, method: str, path: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", "x-api-key": sb.config.token}
    req = urllib.request.Request(sb.base_url + path, data=data, method=method, headers=headers)
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def test_an_object_deleted_through_the_control_endpoint_stays_deleted_after_a_restart(tmp_path: Path) -> None:
    # POST /_sandbox/delete is answered only once the change is saved, like any API write,
    # and Coperniq's accounts (seeded, then changed) are kept like its invoices.
    state = str(tmp_path / "sandbox.db")
    with SandboxServer("coperniq", state=state) as sb:
        before = {a["id"]: a["title"] for a in _api(sb, "GET", "/accounts?title=CUST-000000")}
        old = min(before)
        answer = sb._call("POST", "/_sandbox/delete", {"collection": "accounts", "id": old, "recreate": True})
        new = answer["new_id"]
        assert new not in before
    with SandboxServer("coperniq", state=state) as sb:  # a restart on the same file
        after = {a["id"]: a["title"] for a in _api(sb, "GET", "/accounts?title=CUST-000000")}
    assert after == {new: before[old]}, (old, new, after)
