"""anny's settle window against a time-based adversary (tests/hostile_proxy.py, ``settle=``).

anny has no idempotency keys: a resumed run waits ``--option settle`` seconds from its first
answer before it reads back what a killed run may have sent (bulk.targets.anny, step 1). The
hostile proxy's anny rule is that contract, not the client's defence: a held request of the
killed run lands at a moment in [0, settle) after the next run's first answer whatever the
client reads, or right after the client read back its object, if that comes first (the worst
moment for a client that read too early). These tests show the rule catches a client that
reads back before its window has passed (``--option settle=0``, while the proxy releases the
held request later), and that the same case with a window covering the proxy's passes:

- a held customer create: the early client finds no customer, creates it, and the late one
  makes a second customer with that e-mail (the audit counts customers per e-mail);
- a held item create: the early client reads the invoice before the item landed, adds the
  line again, and its check finds one item too many: the record fails.

Then ``--processes 2``: the killed run's held customer create belongs to one shard (records
are sharded by customer e-mail, bulk/_intake.py), while the other shard had nothing in flight
(all its records finished before the kill); the resumed run must still end with one customer
per e-mail. Each case runs the CLI twice against the real sandbox over real sockets; the kill
and the holds come from progress (the held request reached the proxy, records created).
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest
from anny_audit import exactly_once_problems
from anny_reads import AnnyObjects
from harness import SandboxServer, cli, start_cli, stop, upload_args, wait_until
from hostile_proxy import HostileProxy, LateDelivery

from bulk.checkpoint import id_hash

WINDOW = 2.0  # the proxy's settle window: the moments it may release a held request in
DELAY = 1.5  # the moment the held request is released at, after the next run's first answer
# Against a client that reads at once (settle=0): a moment far enough off that the client's
# look-up, milliseconds after its first answer, comes first even on a loaded machine.
EARLY_WINDOW, EARLY_DELAY = 10.0, 5.0


def _record(number: int, email: str, status: str = "sent") -> dict[str, Any]:
    return {"external_id": f"AN-{number}", "currency": "EUR", "status": status, "prices": "net",
            "issue_date": "2026-03-01",
            "customer": {"external_id": f"C-{email}", "email": email, "name": f"Person {number}", "locale": "de"},
            "lines": [{"title": f"Line {number}.{i}", "quantity": 1 + i, "unit_price": "10.50", "tax_rate": "19"}
                      for i in range(2)]}


def _write(path: Path, records: list[dict[str, Any]]) -> None:
    path.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in records))


def _is_post(suffix: str, carrying: bytes = b"") -> Any:
    return lambda method, path, body: method == "POST" and path.endswith(suffix) and carrying in body


def _killed_then_resumed(tmp_path: Path, records: list[dict[str, Any]], *, hold: Any, settle: float,
                         read_back: bool, processes: int = 1, before_kill: Any = None,
                         window: float = WINDOW, delay: float = DELAY) -> tuple[list[str], LateDelivery, Any]:
    """Run 1 until the request ``hold`` matches reaches the proxy (and ``before_kill(out)`` is
    true), SIGKILL it; run 2 (``--option settle=SETTLE``) to its end while the proxy (settle
    window ``window``) releases the held request ``delay`` s after run 2's first answer, or at
    an answered read-back of its object (``read_back``). Returns (problems, the release's log entry, run 2's result)."""
    src, out = tmp_path / "in.ndjson", tmp_path / "run"
    _write(src, records)
    with SandboxServer("anny", seed=7) as sb, \
            HostileProxy(sb.base_url, seed=7, rates={}, late_lands_first=True,
                         read_back=AnnyObjects() if read_back else None, settle=window) as px:
        args = upload_args(sb, src, out, "--concurrency", "2", "--processes", str(processes), "--retries", "3",
                           "--checkpoint-every", "0.05", "--option", f"settle={settle}", via=px)
        held = px.hold_when(hold)
        proc = start_cli(args, sb.env)
        try:
            wait_until(lambda: (held.reached.is_set() and (before_kill is None or before_kill(out))) or
                       proc.poll() is not None, timeout=60, interval=0.005, what="the held request")
            assert proc.poll() is None, proc.communicate()
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=30)
        finally:
            stop(proc)
        px.release_after(held, 10_000, delay=delay)  # k never comes: the moment, or a read-back
        done = cli(args, sb.env)
        # a run that ended before the moment: the proxy's timer still delivers it then
        wait_until(lambda: bool(px.late_log), timeout=30, interval=0.01, what="the held request's release")
        px.release_all()
        px.drain()
        state = sb.state()
        [entry] = px.late_log
    assert entry.landed and entry.status == 201, entry
    return exactly_once_problems(state, out, records), entry, done


CUSTOMER = [_record(1, "ada@example.com"), _record(2, "bob@example.com", "paid")]
HOLD_ADA = _is_post("/customers", b"ada@example.com")  # the two creates race: hold this one's


@pytest.mark.parametrize("read_back", [False, True], ids=["time-only", "with-read-back"])
def test_a_client_reading_back_before_its_settle_window_is_caught(read_back: bool, tmp_path: Path) -> None:
    """A held customer create, released EARLY_DELAY s after run 2's first answer: run 2 with
    ``--option settle=0`` looks the e-mail up at once, finds nothing and creates the customer:
    the late create makes a second one, which the audit reports. Time-only: the release is the
    proxy's timer alone (run 2's look-up comes milliseconds after its first answer, the moment
    5 s); with the read-back trigger: right after the look-up's answer, on progress alone."""
    problems, entry, done = _killed_then_resumed(tmp_path, CUSTOMER, hold=HOLD_ADA, settle=0,
                                                 read_back=read_back, window=EARLY_WINDOW, delay=EARLY_DELAY)
    assert "customer ada@example.com: 2 customers at the API" in problems, (problems, entry, done.stderr)
    assert entry.trigger == ("read" if read_back else "time"), entry


@pytest.mark.parametrize("read_back", [False, True], ids=["time-only", "with-read-back"])
def test_a_client_waiting_its_settle_window_out_finds_the_late_customer(read_back: bool, tmp_path: Path) -> None:
    """The same, with ``--option settle`` = the proxy's window: the held create lands at DELAY,
    before run 2 looks (its look-up arrives after the moment, and waits for the landing): one
    customer per e-mail, every record created exactly once; no read-back came first."""
    problems, entry, done = _killed_then_resumed(tmp_path, CUSTOMER, hold=HOLD_ADA, settle=WINDOW,
                                                 read_back=read_back)
    assert (problems, done.returncode) == ([], 0), (problems, entry, done.stderr)
    # at its moment (a timer a little late is overtaken by the next arrival, landing first)
    assert entry.trigger == "time" and entry.after_answer is not None and entry.after_answer >= DELAY, entry


@pytest.mark.parametrize("settle", [0, WINDOW])
def test_a_late_item_create_fails_an_early_reader_and_lands_in_time_for_a_patient_one(
        settle: float, tmp_path: Path) -> None:
    """A held item create of AN-1 (sent): with ``settle=0`` run 2 reads AN-1's items before it
    landed (released right after that read's answer), adds the line again, and its check
    before ``send`` finds one item too many: AN-1 fails (never counted created). With the
    window, the item lands at its moment before run 2 reads: AN-1 is exactly right."""
    records = [_record(1, "ada@example.com")]
    window, delay = (WINDOW, DELAY) if settle else (EARLY_WINDOW, EARLY_DELAY)
    problems, entry, done = _killed_then_resumed(tmp_path, records, hold=_is_post("/items"), settle=settle,
                                                 read_back=True, window=window, delay=delay)
    if settle:
        assert (problems, done.returncode, entry.trigger) == ([], 0, "time"), (problems, entry, done.stderr)
    else:
        assert entry.trigger == "read", entry
        assert any(p.startswith("AN-1 failed at item") for p in problems), (problems, done.stderr)


def _finished(run_dir: Path) -> int:
    """Records a shard's last checkpoint holds as finished (rows of its id_map.csv)."""
    try:
        return max(0, len((run_dir / "id_map.csv").read_bytes().splitlines()) - 1)
    except FileNotFoundError:
        return 0


def _in_shard(k: int, count: int, start: int) -> list[str]:
    """E-mails whose records shard ``k`` of ``count`` owns (bulk shards anny by e-mail)."""
    emails = (f"person{i}@example.com" for i in range(start, start + 1000))
    return [e for e in emails if id_hash(e) % count == k]


def test_two_processes_a_late_customer_create_is_found_when_the_other_shard_had_nothing_in_flight(
        tmp_path: Path) -> None:
    """``--processes 2``: shard 1's records (five customers) all finished (in its id_map.csv) before the kill;
    shard 0's only record, last in the file, had its customer create held. The resumed run's
    shard 1 has nothing in flight (no record an earlier run may have sent: its settle clock
    never runs), shard 0 waits its window out; the held create lands at DELAY: one customer per
    e-mail, every record created once. (The customer of a held create is always its own
    shard's, which holds that record reserved: bulk/_intake.py shards anny by e-mail.)"""
    others = _in_shard(1, 2, 0)[:5]
    mine = _in_shard(0, 2, 0)[0]
    records = [*(_record(i + 1, e) for i, e in enumerate(others)), _record(len(others) + 1, mine)]
    problems, entry, done = _killed_then_resumed(
        tmp_path, records, hold=lambda m, p, b: m == "POST" and p.endswith("/customers") and mine.encode() in b,
        settle=WINDOW, read_back=True, processes=2, before_kill=lambda out: _finished(out / "shards" / "1of2") == 5)
    assert (problems, done.returncode) == ([], 0), (problems, entry, done.stderr)
    assert entry.trigger == "time", entry
