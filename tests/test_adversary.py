"""Exactly once, proven by an adversary (issue 10): SIGKILL and resume through a hostile network,
for every target, with every invoice audited at the sandbox, not only counted.

The network is tests/hostile_proxy.py between bulk and the sandbox: seeded 429s (Retry-After 0
or 1), 503s, resets before forwarding, forwards whose answer is dropped (the server committed,
the client sees a dead connection) and delays of 50-600 ms before forwarding (so a request of
a killed run reaches the sandbox after its sender died), on every kind of request.

The kills come from progress, never from wall-clock sleeps: the proxy holds the run's k-th
request and the run is SIGKILLed while it waits for it (harness.kill_until_done). The held
request is then delivered late: after the kill, or while the next run is already working
(at its 1st-5th request; for anny, whose contract is time-based, at a seeded moment in its
settle window after its first answer, or right after it read back what the held request
writes if that comes first: see _scenario), which is what a request stuck in a network does. Then the same
command runs until it exits on its own, and the audit checks, from the sandbox's own state
(GET /_sandbox/state) and the input file alone:

- exactly one invoice per external id, none missing, none extra;
- its line items equal the record's lines as a multiset (title, description, quantity, unit
  price, tax rate, item, by each target's mapping: tests/support/<target>.py);
- its status is the one the record asks for (by the target's mapping);
- the ID map has one row per record and equals the server (invoice id, customer id), with the
  record's line, currency and money-rule totals;
- summary.json: complete, counts (read, created, rejected, failed, uncertain) and per-currency
  totals equal to an independent computation from the input (Decimal, written here: not
  bulk.money);
- every bad input line is rejected once, with its field, and copied verbatim to failed.ndjson;
- anny: one customer per e-mail, and every late delivery released at its drawn moment.

Every problem found is listed in the assertion message (seed, target, what differs). The
default variant kills 26 times over the four targets; ``-m slow`` runs more records, kills and
seeds. The proxy itself is tested first: each fault happens and does what it says.
"""

from __future__ import annotations

import asyncio
import copy
import csv
import http.client
import json
import random
import shutil
import socket
import threading
from collections import Counter
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from aiohttp import web
from anny_reads import AnnyObjects
from harness import (
    REPO,
    SandboxServer,
    ScriptedServer,
    assert_outputs_whole,
    cli,
    kill_until_done,
    support,
    upload_args,
    wait_until,
)
from hostile_proxy import FAULTS, Hold, HostileProxy, LateDelivery, request_kind

import bulk.targets
from bulk.generate import generate

TARGETS = bulk.targets.names()  # the registered targets (entry points included)
CORPUS = (REPO / "fixtures" / "hostile.ndjson").read_bytes().split(b"\n")
# Lines of fixtures/hostile.ndjson that every target rejects before sending, with the field named.
BAD_LINES = {2: "(line)", 13: "external_id", 21: "customer.email", 26: "currency", 44: "lines[0].quantity",
             53: "lines[0].unit_price"}

# anny's settle window (--option settle) in the adversary scenarios, and the proxy's release window.
ANNY_SETTLE = 2.0

# ISO 4217 minor units that are not 2 (the README's money rule), written out here on purpose.
_MINOR = {**dict.fromkeys("BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF".split(), 0),
          **dict.fromkeys("BHD IQD JOD KWD LYD OMR TND".split(), 3)}


# --- the input -----------------------------------------------------------------------------------


class Job:
    """The input file of one scenario and what it must become, computed from its bytes."""

    def __init__(self, path: Path, n: int, seed: int, bad: int = 4) -> None:
        rng = random.Random(seed)
        generated = iter([line.rstrip(b"\n") for line in generate(n, seed=seed)])
        bad = [(CORPUS[no - 1], BAD_LINES[no]) for no in rng.sample(sorted(BAD_LINES), bad)]
        slots = sorted(rng.sample(range(1, n + len(bad) + 1), len(bad) + 1))
        dup_at = slots.pop()  # the last: a copy of a line before it, so it is the duplicate
        bad_at = dict(zip(slots, bad, strict=True))
        self.lines: list[bytes] = []
        self.bad: dict[int, tuple[bytes, str]] = {}  # line number -> (raw line, field)
        for i in range(n + len(bad) + 1):
            if i == dup_at:
                copy = rng.choice([raw for no, raw in enumerate(self.lines, 1) if no not in self.bad])
                bad_at[i] = (copy, "external_id")
            if i in bad_at:
                self.bad[i + 1] = bad_at[i]
                self.lines.append(bad_at[i][0])
            else:
                self.lines.append(next(generated))
        path.write_bytes(b"".join(line + b"\n" for line in self.lines))
        self.docs: dict[str, tuple[int, dict[str, Any]]] = {}  # external id -> (line number, record)
        for no, raw in enumerate(self.lines, 1):
            if no not in self.bad:
                doc = json.loads(raw, parse_float=Decimal)
                self.docs[doc["external_id"]] = (no, doc)
        assert len(self.docs) == n


def _money(doc: dict[str, Any]) -> tuple[Decimal, Decimal, Decimal]:
    """(net, tax, gross) of a record by the README's money rule, from the raw record."""
    quantum = Decimal(1).scaleb(-_MINOR.get(doc["currency"], 2))

    def rnd(x: Decimal) -> Decimal:
        return x.quantize(quantum, rounding=ROUND_HALF_UP)

    net = tax = gross = Decimal(0)
    for ln in doc["lines"]:
        q, p, rate = (Decimal(str(ln[k])) for k in ("quantity", "unit_price", "tax_rate"))
        if doc.get("prices", "net") == "net":
            n = rnd(q * p)
            t = rnd(n * rate / 100)
            g = n + t
        else:
            g = rnd(q * p)
            n = rnd(g * 100 / (100 + rate))
            t = g - n
        net, tax, gross = net + n, tax + t, gross + g
    return net, tax, gross


def _totals(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for doc in docs:
        cur = out.setdefault(doc["currency"],
                             {"invoices": 0, "net": Decimal(0), "tax": Decimal(0), "gross": Decimal(0)})
        cur["invoices"] += 1
        for key, value in zip(("net", "tax", "gross"), _money(doc), strict=True):
            cur[key] += value
    return out


# --- the audit -----------------------------------------------------------------------------------


def _show(items: Counter[tuple[Any, ...]]) -> str:
    return "; ".join(f"{n}x {tuple(str(v) for v in item)}" for item, n in items.items())


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def audit(target: str, state: dict[str, Any], out: Path, job: Job) -> tuple[list[str], dict[str, int]]:
    """Every difference between the sandbox, the run directory and the input: (problems, figures)."""
    sup = support(target)
    problems: list[str] = []
    invoices = sup.audited(state)
    by_ext: dict[str, list[dict[str, Any]]] = {}
    for inv in invoices:
        by_ext.setdefault(inv["external_id"], []).append(inv)
    for ext, found in by_ext.items():
        if len(found) > 1:
            problems.append(f"{ext}: {len(found)} invoices at the API (ids {[i['id'] for i in found]})")
    missing = sorted(set(job.docs) - set(by_ext))
    extra = sorted(set(by_ext) - set(job.docs))
    if missing:
        problems.append(f"missing at the API: {missing}")
    if extra:
        problems.append(f"at the API but not valid input: {extra}")

    items_audited = 0
    for ext, (no, doc) in job.docs.items():
        for inv in by_ext.get(ext, []):
            want, got = Counter(sup.record_items(doc)), Counter(inv["items"])
            items_audited += len(inv["items"])
            if want != got:
                problems.append(f"{ext} (line {no}, invoice {inv['id']}): items differ: "
                                f"missing [{_show(want - got)}], extra [{_show(got - want)}]")
            if inv["status"] != sup.record_status(doc):
                problems.append(f"{ext} (line {no}, invoice {inv['id']}): status {inv['status']!r}, "
                                f"the record asks for {sup.record_status(doc)!r}")

    rows = _read_csv(out / "id_map.csv")
    row_counts = Counter(r["external_id"] for r in rows)
    twice = {k: v for k, v in row_counts.items() if v > 1}
    if twice:
        problems.append(f"id_map.csv holds {len(twice)} external ids more than once: {dict(list(twice.items())[:10])}")
    if set(row_counts) != set(job.docs):
        problems.append(f"id_map.csv lacks {sorted(set(job.docs) - set(row_counts))[:10]}, "
                        f"has unknown {sorted(set(row_counts) - set(job.docs))[:10]}")
    for row in rows:
        ext = row["external_id"]
        if ext not in job.docs:
            continue
        no, doc = job.docs[ext]
        server = by_ext.get(ext, [])
        if len(server) == 1:
            inv = server[0]
            if (row["invoice_id"], row["customer_id"]) != (inv["id"], inv["customer_id"]):
                problems.append(f"{ext}: id_map.csv says invoice {row['invoice_id']} customer {row['customer_id']}, "
                                f"the API invoice {inv['id']} customer {inv['customer_id']}")
        want = (str(no), doc["currency"], *_money(doc))
        got = (row["line"], row["currency"], *(Decimal(row[k]) for k in ("net", "tax", "gross")))
        if want != got:
            problems.append(f"{ext}: id_map.csv row (line, currency, net, tax, gross) {got}, the input {want}")

    summary = json.loads((out / "summary.json").read_text())
    counts = summary["records"]
    want_counts = {"read": len(job.lines), "created": len(job.docs), "rejected": len(job.bad), "failed": 0,
                   "uncertain": 0}
    got_counts = {k: counts.get(k) for k in want_counts}
    if not summary.get("complete"):
        problems.append("summary.json: the job is not complete")
    if got_counts != want_counts:
        problems.append(f"summary.json counts {got_counts}, the input {want_counts}")
    want_totals = _totals([doc for _, doc in job.docs.values()])
    got_totals = {cur: {"invoices": t["invoices"], **{k: Decimal(t[k]) for k in ("net", "tax", "gross")}}
                  for cur, t in summary["totals"].items()}
    if got_totals != want_totals:
        for cur in sorted(set(want_totals) | set(got_totals)):
            if want_totals.get(cur) != got_totals.get(cur):
                problems.append(f"summary.json totals {cur}: {got_totals.get(cur)}, the input {want_totals.get(cur)}")

    reasons = _read_csv(out / "failed_reasons.csv")
    got_rejects = Counter((int(r["line"]), r["kind"], r["field"]) for r in reasons)
    want_rejects = Counter((no, "rejected", field) for no, (_, field) in job.bad.items())
    if got_rejects != want_rejects:
        problems.append(f"failed_reasons.csv: missing {sorted(want_rejects - got_rejects)}, "
                        f"extra {sorted(got_rejects - want_rejects)}")
    for r in reasons:
        if r["kind"] != "rejected":  # every valid record must end created: say why this one did not
            problems.append(f"line {r['line']} {r['external_id']}: {r['kind']} at {r['stage']} "
                            f"(HTTP {r['http_status']}, field {r['field']!r}): {r['message'][:300]}")
    failed_lines = Counter((out / "failed.ndjson").read_bytes().splitlines())
    want_failed = Counter(raw for raw, _ in job.bad.values())
    if failed_lines != want_failed:
        problems.append(f"failed.ndjson: missing {sum((want_failed - failed_lines).values())} bad lines, "
                        f"{sum((failed_lines - want_failed).values())} extra lines")
    return problems, {"invoices": len(invoices), "items": items_audited}


# --- the scenario --------------------------------------------------------------------------------


def _scenario(target: str, tmp_path: Path, *, n: int, kills: int, seed: int, late: float = 0.4, span: int = 40,
              rates: dict[str, float] | None = None, extra: tuple[str, ...] = (),
              client_settle: float = 0.0) -> list[LateDelivery]:
    """One scenario (module docstring), audited; returns the proxy's late deliveries. anny:
    ``client_settle`` (if given) is bulk's ``--option settle`` instead of the proxy's window
    (a client waiting too short, for the test that shows the scenario catches it)."""
    src, out = tmp_path / "in.ndjson", tmp_path / "run"
    job = Job(src, n, seed)
    # anny has no idempotency keys: its defence against a killed run's late request is to wait
    # out a settle window (bulk.targets.anny, step 1: ``--option settle``, from each process's
    # first answer) before it reads back what an earlier run may have sent, then to trust that
    # read. anny's contract is time-based: a late request lands before, or within ``settle``
    # seconds of, the resumed run's first answer; one landing later cannot be told apart from
    # a line bulk must add, and ends, by design, in a failed record, never in a wrong one
    # counted (tests/test_anny.py, the "after-look" case). So the rule for anny is the
    # contract, not the client's defence: the proxy (``settle=ANNY_SETTLE``) releases each
    # held request at a moment drawn from the seed in [0, settle) after the next run's first
    # answer, whatever the client reads (the k the harness draws is no trigger here), or right
    # after the server answered a read-back of the object it writes (tests/anny_reads), if
    # that comes first: the worst moment for a client that looked too early, and one that
    # waits its window out never reads it before the drawn moment, so such a release is
    # itself listed as a problem. A client that reads back before its window has passed is
    # caught (tests/test_anny_settle_window.py); every case the rule allows is inside anny's
    # contract: a failed record here is a bulk bug. The audit also counts anny's customers:
    # one per e-mail. The other targets find late creates at any time (released at the k-th
    # request).
    timed = target == "anny"
    if timed:
        extra = (*extra, "--option", f"settle={client_settle or ANNY_SETTLE}")
    with SandboxServer(target, latency_ms=5, seed=seed) as sb, \
            HostileProxy(sb.base_url, seed=seed, rates=rates, cover=True, late_lands_first=timed,
                         read_back=AnnyObjects() if timed else None, settle=ANNY_SETTLE if timed else None) as px:
        def args_for(rng: random.Random) -> list[str]:
            # The concurrency and the checkpoint interval may change between runs (a user may
            # well change them on resume); frequent checkpoints put kills between checkpoints.
            return upload_args(sb, src, out, "--concurrency", str(rng.choice([4, 8])), "--retries", "12",
                               "--checkpoint-every", rng.choice(["0.02", "0.2", "1"]), *extra, via=px)

        # A duplicate seen transiently is the audit's business (it lists them all at the end).
        result = kill_until_done(sb, px, args_for, kills=kills, seed=seed, records=n, span=span,
                                 late_into_next_run=late, late_window=5, after_each=None)
        state = sb.state()
        stats = px.stats()
        deliveries = list(px.late_log)
    problems, figures = audit(target, state, out, job)
    if timed:
        problems += customers_once(state)
    order = _late_order(deliveries)
    fates = {f: stats["fates"].get(f, 0) for f in (*FAULTS, "held", "forward")}
    report = (f"{target} seed {seed}: {result.delivered} of {kills} kills landed (on {Counter(result.held_kinds)}), "
              f"{result.late_into_next_run} held requests delivered into the next run, exits {result.exits}; "
              f"proxy: {stats['seen']} requests, {fates}, {stats['late']} forwards completed after the client "
              f"was gone; audited {figures['invoices']} invoices, {figures['items']} items; "
              f"late deliveries into the next run: {order}")
    print(report)
    if timed:  # the rule's premise, from the proxy's own record
        problems = [*late_rule_broken(deliveries), *problems]
    if result.done.returncode != 1:  # 1: finished, with the bad lines rejected
        problems.insert(0, f"the last run exited {result.done.returncode}: {result.done.stderr[-2000:]}")
    assert not problems, f"{report}\n{len(problems)} problems:\n  " + "\n  ".join(problems[:60])
    assert result.delivered == kills, report
    missing = [f for f in FAULTS if not fates[f]]
    assert not missing, f"{report}\nfaults never injected: {missing}"
    assert stats["late"] >= result.delivered, report
    assert_outputs_whole(out)
    return deliveries


def customers_once(state: dict[str, Any]) -> list[str]:
    """anny: every e-mail at most one customer at the server (a late create found, not repeated)."""
    emails = Counter(str(c["email"]).lower() for c in state["customers"])
    return [f"customer {email}: {n} customers at the API" for email, n in sorted(emails.items()) if n > 1]


def late_rule_broken(deliveries: list[LateDelivery]) -> list[str]:
    """What the anny rule promises of each release, checked from the proxy's log: it came at
    its drawn moment (``time``: a ``read`` release means the client read the held request's
    object back before that moment, inside its settle window), drawn in the window, and landed."""
    broken = []
    for d in deliveries:
        if d.trigger != "time":
            broken.append(f"held request {d.hold} was read back before its moment (released by {d.trigger}): {d}")
        # the drawn moment (a timer late on a busy machine is overtaken by the next arrival,
        # which goes on only once the held request landed: the proxy's own guarantee)
        if not d.landed or d.delay is None or not 0 <= d.delay < ANNY_SETTLE:
            broken.append(f"held request {d.hold} did not land at a moment in the settle window: {d}")
    return broken


def _late_order(deliveries: list[LateDelivery]) -> str:
    """The logged order of each late delivery: what was held, what released it (the next
    run's ordinal-th request, k-th or a read-back), which of that run's requests landed first."""
    return "; ".join(
        f"#{d.hold} {d.kind} released by {d.trigger} at the next run's request {d.ordinal} ({d.trigger_kind})"
        f"{'' if d.after_answer is None else f' {d.after_answer:.2f} s after its first answer (drawn {d.delay:.2f})'}, "
        f"answered {d.status}, after {len(d.landed_after)} of its requests had landed "
        f"[{', '.join(kind for _, kind in d.landed_after[:6])}{', ...' if len(d.landed_after) > 6 else ''}]"
        for d in deliveries) or "none"


# Per target: (records, kills). anny needs ~7 requests per invoice, so fewer records.
CI = {"agiled": (50, 7), "anny": (24, 6), "chargeover": (60, 6), "coperniq": (50, 7)}  # 26 kills


@pytest.mark.parametrize("target", TARGETS)
def test_kill_and_resume_through_a_hostile_network(target: str, tmp_path: Path) -> None:
    n, kills = CI[target]
    _scenario(target, tmp_path, n=n, kills=kills, seed=1000 + TARGETS.index(target))


# Every target, anny included (with an explicit --processes 2). anny's earlier failure here
# (a killed run's held item create landing after a resumed worker's read-back: record failed,
# extra item at the server) was this scenario's, not the engine's: the proxy released the held
# request at the next run's k-th request (k up to 5), which could come after a read-back of
# the very invoice, outside anny's contract. For anny the held request is now released at a
# seeded moment in the settle window after the next run's first answer (anny's contract, see
# _scenario), with 1 or 2 processes (each shard worker keeps its own settle clock, started at
# its own first answer, never before the proxy's).
@pytest.mark.parametrize("target", TARGETS)
def test_two_processes_kill_and_resume_through_a_hostile_network(target: str, tmp_path: Path) -> None:
    """The same with --processes 2 (what auto takes for a big plain file): each shard worker
    skips the other's lines unparsed (bulk._intake), and the SIGKILL of the parent takes both."""
    n, kills = CI[target]
    _scenario(target, tmp_path, n=n, kills=kills, seed=3000 + TARGETS.index(target), extra=("--processes", "2"))


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, 2])
@pytest.mark.parametrize("seed", range(8))
def test_anny_seed_sweep_kill_and_resume_through_a_hostile_network(seed: int, processes: int, tmp_path: Path) -> None:
    """The anny CI scenario over more seeds (the time-based rule draws a new moment per hold)."""
    n, kills = CI["anny"]
    _scenario("anny", tmp_path, n=n, kills=kills, seed=5000 + 10 * seed + processes,
              extra=("--processes", str(processes)))


@pytest.mark.slow
def test_the_anny_scenario_catches_a_client_that_reads_back_before_its_settle_window(tmp_path: Path) -> None:
    """bulk with ``--option settle=0.01`` (it reads back at once) in the anny scenario, whose
    proxy releases held requests in a 2 s window: within a few seeds the audit lists a
    problem (a second customer or item, a failed record, or a held write read back before its
    moment). Bounded: at most 6 seeds; which seed catches it depends on what the kills hold
    (a held read is harmless), so the test asks for one, not for each."""
    caught = []
    for seed in range(6):
        (tmp_path / f"s{seed}").mkdir()
        try:
            _scenario("anny", tmp_path / f"s{seed}", n=24, kills=8, seed=7000 + seed, late=1.0, client_settle=0.01)
        except AssertionError as exc:
            assert " problems:\n" in str(exc), exc  # the audit's finding, not another check
            caught.append((seed, str(exc)))
            break
    assert caught, "no seed caught a client that reads back at once"
    seed, message = caught[0]
    print(f"caught at seed {7000 + seed}:{message.split(' problems:', 1)[1][:3000]}")


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("target", TARGETS)
def test_soak_kill_and_resume_through_a_hostile_network(target: str, seed: int, tmp_path: Path) -> None:
    _scenario(target, tmp_path, n=300 if target != "anny" else 120, kills=20,
              seed=2000 + 10 * seed + TARGETS.index(target), late=0.5)


# --- the proxy itself ----------------------------------------------------------------------------


def _request(base_url: str, method: str, path: str, body: bytes = b"") -> tuple[int, dict[str, str], bytes] | str:
    """One request on a fresh connection: (status, headers, body), or the connection error's name."""
    host, port = base_url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request(method, path, body=body or None, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    except (ConnectionError, http.client.HTTPException) as exc:
        return type(exc).__name__
    finally:
        conn.close()


class _Recorder:
    """An upstream that commits each request it receives (``committed``) and answers 201."""

    def __init__(self) -> None:
        self.committed: list[tuple[str, str, bytes]] = []

    async def respond(self, request: web.Request) -> web.Response:
        self.committed.append((request.method, request.path_qs, await request.read()))
        return web.json_response({"ok": True}, status=201)


def test_proxy_injects_every_fault_with_what_it_means() -> None:
    rec = _Recorder()
    rates = {"throttle": 0.15, "unavailable": 0.15, "reset": 0.15, "drop_answer": 0.15, "delay": 0.15}
    with ScriptedServer(rec.respond) as up, HostileProxy(up.base_url, seed=11, rates=rates, delay_ms=(50, 60)) as px:
        outcomes = [(i, _request(px.base_url, "POST", f"/v1/things?n={i}", b'{"i": %d}' % i)) for i in range(80)]
        px.drain()
        stats = px.stats()
        journal = {int(ident.split("n=")[1].split()[0]): fate for _, _, ident, _, fate in px.journal}
    committed = {int(path.split("n=")[1]) for _, path, _ in rec.committed}
    assert set(stats["fates"]) == {*FAULTS, "forward"}, stats
    for i, outcome in outcomes:
        fate = journal[i]
        if fate == "throttle":
            assert isinstance(outcome, tuple) and outcome[0] == 429 and outcome[1]["Retry-After"] in ("0", "1")
        elif fate == "unavailable":
            assert isinstance(outcome, tuple) and outcome[0] == 503
        elif fate in ("reset", "drop_answer"):
            assert isinstance(outcome, str), (i, fate, outcome)  # a dead connection, no answer
        else:
            assert isinstance(outcome, tuple) and outcome[0] == 201, (i, fate, outcome)
        # What reached the server: forwards, delays and drops; never a 429, 503 or reset.
        assert (i in committed) == (fate in ("forward", "delay", "drop_answer")), (i, fate)
    assert stats["kinds"] == {"POST /v1/things?n": 80}


def test_a_dropped_answer_committed_at_the_server_and_the_client_saw_a_dead_connection() -> None:
    rec = _Recorder()
    with ScriptedServer(rec.respond) as up, HostileProxy(up.base_url, seed=1, rates={"drop_answer": 1.0},
                                                         max_faults=1) as px:
        first = _request(px.base_url, "POST", "/invoices", b'{"n": "INV-1"}')
        assert isinstance(first, str), first  # RemoteDisconnected or a reset: no status line at all
        assert rec.committed == [("POST", "/invoices", b'{"n": "INV-1"}')]
        # max_faults=1: the same request again is forwarded faithfully (and commits again: the
        # proxy does not dedupe, that is the client's job).
        again = _request(px.base_url, "POST", "/invoices", b'{"n": "INV-1"}')
        assert isinstance(again, tuple) and again[0] == 201
        assert len(rec.committed) == 2
        assert px.stats()["fates"] == {"drop_answer": 1, "forward": 1}


def test_a_reset_forwards_nothing() -> None:
    rec = _Recorder()
    with ScriptedServer(rec.respond) as up, HostileProxy(up.base_url, seed=1, rates={"reset": 1.0}) as px:
        assert isinstance(_request(px.base_url, "POST", "/invoices", b"{}"), str)
        px.drain()
        assert rec.committed == []


def _send_and_vanish(base_url: str, path: str, body: bytes) -> None:
    """A client that sends a whole request and dies at once (its socket closed, nothing read)."""
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {len(body)}\r\n\r\n".encode() + body)


def test_a_delayed_request_reaches_the_server_after_its_client_died() -> None:
    rec = _Recorder()
    with ScriptedServer(rec.respond) as up, HostileProxy(up.base_url, seed=1, rates={"delay": 1.0},
                                                         delay_ms=(300, 300)) as px:
        _send_and_vanish(px.base_url, "/invoices", b'{"n": 1}')
        wait_until(lambda: px.seen == 1, timeout=10, interval=0.005, what="the proxy to read the request")
        assert rec.committed == []  # still waiting out its delay
        px.drain()
        assert rec.committed == [("POST", "/invoices", b'{"n": 1}')]
        assert px.stats()["late"] == 1


def test_a_held_request_waits_for_the_test_then_is_delivered_late() -> None:
    rec = _Recorder()
    with ScriptedServer(rec.respond) as up, HostileProxy(up.base_url, seed=1, rates={}) as px:
        hold = px.hold_after(2)
        assert _request(px.base_url, "GET", "/first")[0] == 201  # type: ignore[index]
        sender = threading.Thread(target=_send_and_vanish, args=(px.base_url, "/invoices/7/send", b"{}"))
        sender.start()
        assert hold.reached.wait(10)
        sender.join(10)
        assert [p for _, p, _ in rec.committed] == ["/first"]  # the client is gone; the request waits
        assert hold.kind == "POST /invoices/{id}/send"
        hold.release()
        px.drain()
        assert [p for _, p, _ in rec.committed] == ["/first", "/invoices/7/send"]
        assert px.stats()["late"] == 1 and px.stats()["fates"] == {"forward": 1, "held": 1}


def test_release_after_lets_a_held_request_go_when_a_later_one_arrives() -> None:
    rec = _Recorder()
    with ScriptedServer(rec.respond) as up, HostileProxy(up.base_url, seed=1, rates={}) as px:
        hold = px.hold_after(1)
        threading.Thread(target=_send_and_vanish, args=(px.base_url, "/late", b"{}"), daemon=True).start()
        assert hold.reached.wait(10)
        px.release_after(hold, 2)
        assert _request(px.base_url, "GET", "/a")[0] == 201  # type: ignore[index]
        assert [p for _, p, _ in rec.committed] == ["/a"]
        assert _request(px.base_url, "GET", "/b")[0] == 201  # type: ignore[index]
        px.drain()
        assert [p for _, p, _ in rec.committed][:1] == ["/a"] and sorted(p for _, p, _ in rec.committed) == \
            ["/a", "/b", "/late"]


class _Slow(_Recorder):
    """A recorder that takes ``lag`` seconds over ``/late`` before committing it (a late request
    still on its way to the server when the next one comes)."""

    def __init__(self, lag: float) -> None:
        super().__init__()
        self.lag = lag

    async def respond(self, request: web.Request) -> web.Response:
        if request.path == "/late":
            await asyncio.sleep(self.lag)
        return await super().respond(request)


def test_a_late_request_released_by_the_next_run_lands_before_it_when_asked() -> None:
    """``late_lands_first`` (the anny scenarios): the request that releases a held one, and
    every one arriving meanwhile, goes on only after the held one has landed, however long
    the server takes over it (without it, /a would commit while /late still waits at the
    slow server): the order the anny scenario needs is made by the proxy, not by timing."""
    rec = _Slow(lag=0.3)
    with ScriptedServer(rec.respond) as up, HostileProxy(up.base_url, seed=1, rates={}, late_lands_first=True) as px:
        hold = px.hold_after(1)
        threading.Thread(target=_send_and_vanish, args=(px.base_url, "/late", b"{}"), daemon=True).start()
        assert hold.reached.wait(10)
        px.release_after(hold, 1)
        assert rec.committed == []  # held
        assert _request(px.base_url, "GET", "/a")[0] == 201  # type: ignore[index]
        assert [p for _, p, _ in rec.committed] == ["/late", "/a"]
        assert _request(px.base_url, "GET", "/b")[0] == 201  # type: ignore[index]  # nothing is held any more
        px.drain()
        assert [p for _, p, _ in rec.committed] == ["/late", "/a", "/b"]
        assert px.stats()["late"] == 1


class _AnnyShaped(_Recorder):
    """An upstream answering anny-shaped JSON:API documents (an invoice's id and number, a
    customer's id and e-mail, as anny documents them), slow over item and customer creates
    (``lag`` s: a late request still on its way when the next one comes)."""

    def __init__(self, lag: float) -> None:
        super().__init__()
        self.lag = lag

    async def respond(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.method == "POST" and request.path in ("/api/v1/items", "/api/v1/customers", "/api/v1/addresses"):
            await asyncio.sleep(self.lag)
        self.committed.append((request.method, unquote(request.path_qs), body))  # as sent, %-escapes read
        if request.method == "POST" and request.path == "/api/v1/invoices":
            number = json.loads(body)["data"]["attributes"]["number"]
            return web.json_response({"data": {"type": "invoices", "id": "inv-7", "attributes": {"number": number}}},
                                     status=201)
        if request.method == "POST" and request.path == "/api/v1/customers":
            email = json.loads(body)["data"]["attributes"]["email"]
            return web.json_response({"data": {"type": "customers", "id": "cus-3", "attributes": {"email": email}}},
                                     status=201)
        return web.json_response({"data": []}, status=200 if request.method == "GET" else 201)


def _doc(kind: str, attributes: dict[str, Any], **related: str) -> bytes:
    return json.dumps({"data": {"type": kind, "attributes": attributes, "relationships": {
        name: {"data": {"type": "x", "id": ident}} for name, ident in related.items()}}}).encode()


# (what the first run made, answered; the held request; reads that do not read its object;
#  the read that does). Ids come from the answers the proxy passed on: the item create names
# its invoice by id, the read by number (and the other way round); the address its customer.
READ_BACK = {
    "item, read by number": (
        [("/api/v1/invoices?o=1", _doc("invoices", {"number": "AN-1", "currency": "EUR"}))],
        ("/api/v1/items?o=1&calculate_from_net=true", _doc("items", {"title": "x"}, document="inv-7")),
        ["/api/v1/invoices?o=1&page[size]=1", "/api/v1/invoices?o=1&filter[number]=AN-2&include=items",
         "/api/v1/invoices/inv-8?o=1&include=items", "/api/v1/customers?o=1&filter[email]=a@b.de"],
        "/api/v1/invoices?o=1&filter[number]=AN-1&include=items"),
    "item, read by id": (
        [("/api/v1/invoices?o=1", _doc("invoices", {"number": "AN-1", "currency": "EUR"}))],
        ("/api/v1/items?o=1&calculate_from_net=true", _doc("items", {"title": "x"}, document="inv-7")),
        ["/api/v1/invoices?o=1&page[size]=1"], "/api/v1/invoices/inv-7?o=1&include=items"),
    "invoice, read by number": (
        [], ("/api/v1/invoices?o=1", _doc("invoices", {"number": "AN-1", "currency": "EUR"})),
        ["/api/v1/invoices?o=1&filter[number]=AN-10&include=items"],
        "/api/v1/invoices?o=1&filter[number]=AN-1&include=items"),
    "send, read by number": (
        [("/api/v1/invoices?o=1", _doc("invoices", {"number": "AN-1", "currency": "EUR"}))],
        ("/api/v1/invoices/inv-7/send?o=1", b""), ["/api/v1/invoices/inv-70?o=1&include=items"],
        "/api/v1/invoices?o=1&filter[number]=AN-1&include=items"),
    "customer, read by e-mail": (
        [], ("/api/v1/customers?o=1", _doc("customers", {"email": "Jane@Example.com", "locale": "de"})),
        ["/api/v1/customers?o=1&filter[email]=jane@example.co&include=address"],
        "/api/v1/customers?o=1&filter[email]=jane%40example.com&include=address"),
    "address, read by the customer's e-mail": (
        [("/api/v1/customers?o=1", _doc("customers", {"email": "jane@example.com", "locale": "de"}))],
        ("/api/v1/addresses?o=1", _doc("addresses", {"city": "Köln"}, addressable="cus-3")),
        ["/api/v1/customers?o=1&filter[email]=joe@example.com&include=address"],
        "/api/v1/customers?o=1&filter[email]=JANE@example.com&include=address"),
}


@pytest.mark.parametrize("case", READ_BACK)
def test_a_read_back_of_a_held_requests_object_releases_it_right_after_its_answer(case: str) -> None:
    """``read_back`` (the anny scenarios): with k far off and the settle moment not reached, the
    held request goes on only once a request that reads back what it writes (by anny's
    documented API: tests/anny_reads) was answered: it lands right after the client looked (the
    worst moment for a client that looked too early), before any later request goes on; the
    requests before it (the next run's other work) went on and landed first, and the log says so."""
    made, (held_path, held_body), others, read = READ_BACK[case]
    rec = _AnnyShaped(lag=0.3)
    with ScriptedServer(rec.respond) as up, HostileProxy(up.base_url, seed=1, rates={}, late_lands_first=True,
                                                         read_back=AnnyObjects(), settle=60) as px:
        for path, body in made:
            assert _request(px.base_url, "POST", path, body)[0] == 201  # type: ignore[index]
        hold = px.hold_after(1)
        threading.Thread(target=_send_and_vanish, args=(px.base_url, held_path, held_body), daemon=True).start()
        assert hold.reached.wait(10)
        before = len(rec.committed)
        px.release_after(hold, 1000, delay=50)  # neither k nor the moment comes: only the read-back
        for path in others:
            assert _request(px.base_url, "GET", path)[0] == 200  # type: ignore[index]
        assert len(rec.committed) == before + len(others)  # still held: none of those reads its object
        assert _request(px.base_url, "GET", read)[0] == 200  # type: ignore[index]
        assert _request(px.base_url, "GET", "/api/v1/invoices?o=1&page[size]=1")[0] == 200  # type: ignore[index]
        landed = [path for _, path, _ in rec.committed[before:]]
        # the read first (it saw nothing), then the held one, then the next request
        assert landed == [unquote(p) for p in (*others, read, held_path, "/api/v1/invoices?o=1&page[size]=1")]
        [entry] = px.late_log
        assert (entry.trigger, entry.ordinal, entry.status, entry.landed) == ("read", len(others) + 1, 201, True)
        assert entry.after_answer is not None and entry.after_answer < 50 and entry.delay == 50
        assert [n for n, _ in entry.landed_after] == list(range(hold.number + 1, hold.number + 2 + len(others)))


def test_a_held_request_lands_at_its_moment_after_the_next_runs_first_answer_whatever_is_read() -> None:
    """``settle`` (anny's contract): the clock starts at the first answer to a request that
    arrived after ``release_after`` (not at a request that arrived before it, nor at one still
    unanswered), the k-th request is no trigger, and the held request lands ``delay`` s after
    that answer, with nothing more arriving: a timer, not a client's request, releases it."""
    rec = _AnnyShaped(lag=0.0)
    with ScriptedServer(rec.respond) as up, HostileProxy(up.base_url, seed=1, rates={}, late_lands_first=True,
                                                         read_back=AnnyObjects(), settle=60) as px:
        hold = px.hold_after(1)
        item = _doc("items", {"title": "x"}, document="inv-7")
        threading.Thread(target=_send_and_vanish, args=(px.base_url, "/api/v1/items?o=1", item), daemon=True).start()
        assert hold.reached.wait(10)
        px.release_after(hold, 1, delay=1.0)  # with settle, k (the next request) is no trigger
        assert rec.committed == [] and px.late_log == []  # no answer yet: the clock has not started
        assert _request(px.base_url, "GET", "/api/v1/invoices?o=1&page[size]=1")[0] == 200  # type: ignore[index]
        assert len(rec.committed) == 1  # the 1st request went on alone; the moment is 1 s after its answer
        wait_until(lambda: len(rec.committed) == 2, timeout=30, interval=0.01, what="the held item to land")
        assert [p for _, p, _ in rec.committed] == ["/api/v1/invoices?o=1&page[size]=1", "/api/v1/items?o=1"]
        px.drain()
        [entry] = px.late_log
        assert (entry.trigger, entry.trigger_kind, entry.status, entry.delay) == ("time", "(timer)", 201, 1.0)
        assert entry.after_answer is not None and entry.after_answer >= 1.0


def test_the_settle_moment_is_drawn_from_the_seed_within_the_window() -> None:
    """Without ``delay`` the moment is drawn from (seed, hold) in [0, settle): the same seed and
    hold draw the same moment, others spread over the window."""
    def moments(seed: int) -> list[float]:
        rec = _Recorder()
        with ScriptedServer(rec.respond) as up, HostileProxy(up.base_url, seed=seed, rates={}, settle=2.0) as px:
            drawn = []
            for number in range(1, 9):
                hold = Hold(number, _proxy=px)
                px.release_after(hold, 1000)
                drawn.append(px._timed[id(hold)].delay)
                hold.release()
            return drawn

    first = moments(5)
    assert moments(5) == first
    assert moments(6) != first
    assert all(0 <= d < 2.0 for d in first) and max(first) - min(first) > 0.5, first


def test_the_k_th_request_releases_a_held_one_when_it_comes_before_any_read_back() -> None:
    """Whichever comes first: the k-th request (not a read of the held item's invoice) releases
    it and it lands before that request goes on; the later read-back finds nothing held."""
    rec = _AnnyShaped(lag=0.3)
    with ScriptedServer(rec.respond) as up, HostileProxy(up.base_url, seed=1, rates={}, late_lands_first=True,
                                                         read_back=AnnyObjects()) as px:
        assert _request(px.base_url, "POST", "/api/v1/invoices?o=1",
                        _doc("invoices", {"number": "AN-1"}))[0] == 201  # type: ignore[index]
        hold = px.hold_after(1)
        item = _doc("items", {"title": "x"}, document="inv-7")
        threading.Thread(target=_send_and_vanish, args=(px.base_url, "/api/v1/items?o=1", item), daemon=True).start()
        assert hold.reached.wait(10)
        px.release_after(hold, 2)
        assert _request(px.base_url, "GET", "/api/v1/invoices?o=1&page[size]=1")[0] == 200  # type: ignore[index]
        assert _request(px.base_url, "GET", "/api/v1/customers?o=1&filter[email]=a@b.de")[0] == 200  # type: ignore[index]
        assert _request(px.base_url, "GET", "/api/v1/invoices/inv-7?o=1")[0] == 200  # type: ignore[index]
        assert [p for _, p, _ in rec.committed[1:]] == ["/api/v1/invoices?o=1&page[size]=1", "/api/v1/items?o=1",
                                                        "/api/v1/customers?o=1&filter[email]=a@b.de",
                                                        "/api/v1/invoices/inv-7?o=1"]
        [entry] = px.late_log
        assert (entry.trigger, entry.ordinal, entry.trigger_kind) == ("k", 2, "GET /api/v1/customers?filter[email]&o")
        assert [kind for _, kind in entry.landed_after] == ["GET /api/v1/invoices?o&page[size]"]


def test_anny_objects_name_what_a_request_writes_and_what_it_reads() -> None:
    objects = AnnyObjects()
    objects.observe("POST", "/api/v1/invoices", 201, b'{"data": {"type": "invoices", "id": "i1", '
                    b'"attributes": {"number": "AN-1"}}}')
    objects.observe("GET", "/api/v1/customers", 200, b'{"data": [{"type": "customers", "id": "c1", '
                    b'"attributes": {"email": "A@B.de"}}]}')
    objects.observe("POST", "/api/v1/invoices", 422, b'{"data": {"type": "invoices", "id": "i9", '
                    b'"attributes": {"number": "AN-1"}}}')  # not an answer that made anything
    assert objects.writes("POST", "/api/v1/items", "o=1", _doc("items", {}, document="i1")) == \
        {"invoice-id:i1", "invoice-number:AN-1"}
    assert objects.writes("POST", "/api/v1/invoices/i1/set-paid", "o=1&sendNotification=false", b"") == \
        objects.writes("PATCH", "/api/v1/invoices/i1", "o=1", b"{}") == {"invoice-id:i1", "invoice-number:AN-1"}
    assert objects.writes("POST", "/api/v1/addresses", "o=1", _doc("addresses", {}, addressable="c1")) == \
        {"customer-id:c1", "customer-email:a@b.de"}
    assert objects.writes("GET", "/api/v1/invoices/i1", "o=1", b"") == set()  # a read writes nothing
    assert objects.writes("POST", "/api/v1/invoices/i1/cancel", "o=1", b"") == set()  # bulk never cancels
    assert objects.reads("GET", "/api/v1/invoices", "o=1&filter%5Bnumber%5D=AN-1&include=items") == \
        {"invoice-id:i1", "invoice-number:AN-1"}
    assert objects.reads("GET", "/api/v1/invoices", "o=1&page[size]=1") == set()  # reads no one invoice
    assert objects.reads("POST", "/api/v1/invoices/i1/send", "o=1") == set()  # a write is no read-back
    assert objects.reads("GET", "/api/v1/customers/c1", "o=1&include=address") == \
        {"customer-id:c1", "customer-email:a@b.de"}


def test_the_draw_depends_on_identity_and_attempt_not_on_interleaving() -> None:
    rec = _Recorder()
    paths = [f"/v1/x?i={i}" for i in range(40)]

    def fates(order: list[str]) -> dict[tuple[str, int], str]:
        with ScriptedServer(rec.respond) as up, HostileProxy(up.base_url, seed=5, delay_ms=(1, 2)) as px:
            for path in order:
                for _ in range(2):  # two attempts of each identity
                    _request(px.base_url, "GET", path)
            px.drain()
            return {(ident, attempt): fate for _, _, ident, attempt, fate in px.journal}

    forward = fates(paths)
    shuffled = paths[:]
    random.Random(3).shuffle(shuffled)
    assert fates(shuffled) == forward
    assert len(set(forward.values())) > 2  # and it is not all the same fate


def test_the_sandbox_control_api_is_never_touched() -> None:
    with SandboxServer("agiled") as sb, HostileProxy(sb.base_url, seed=1, rates={"reset": 1.0}) as px:
        status, _, body = _request(px.base_url, "GET", "/_sandbox/state")  # type: ignore[misc]
        assert status == 200 and json.loads(body)["target"] == "agiled"
        assert px.stats()["seen"] == 0


def test_request_kinds_name_the_endpoint_not_the_ids() -> None:
    assert request_kind("PUT", "/api/v1/invoices/00000001-0000-4000-8000-000000000003/set-paid") == \
        "PUT /api/v1/invoices/{id}/set-paid"
    assert request_kind("GET", "/api/v3/item/external_key:SKU-001") == "GET /api/v3/item/external_key:{key}"
    assert request_kind("GET", "/projects/10001/invoices", ["page", "order_by", "page"]) == \
        "GET /projects/{id}/invoices?order_by&page"


def test_the_audit_finds_what_it_is_meant_to_find(tmp_path: Path) -> None:
    """A clean run audits clean; each kind of damage, done to a copy of the state or of the run
    directory, is reported (so a green adversary test means something)."""
    src, out = tmp_path / "in.ndjson", tmp_path / "run"
    job = Job(src, 12, seed=77)
    with SandboxServer("agiled") as sb:
        done = cli(upload_args(sb, src, out), sb.env)
        assert done.returncode == 1, done.stderr  # the bad lines
        state = sb.state()
    assert audit("agiled", state, out, job)[0] == []

    def damaged(change: Any) -> list[str]:
        st, run = copy.deepcopy(state), tmp_path / f"run-{len(list(tmp_path.iterdir()))}"
        shutil.copytree(out, run)
        change(st, run)
        return audit("agiled", st, run, job)[0]

    def twice(st: dict[str, Any], run: Path) -> None:
        st["invoices"].append({**st["invoices"][0], "id": 999})

    def item(st: dict[str, Any], run: Path) -> None:
        st["invoices"][1]["items"][0]["quantity"] = "999"

    def status(st: dict[str, Any], run: Path) -> None:
        st["invoices"][2]["status"] = "paid" if st["invoices"][2]["status"] != "paid" else "draft"

    def id_map_row(st: dict[str, Any], run: Path) -> None:
        rows = (run / "id_map.csv").read_bytes().splitlines(keepends=True)
        (run / "id_map.csv").write_bytes(b"".join(rows) + rows[1])

    def totals(st: dict[str, Any], run: Path) -> None:
        s = json.loads((run / "summary.json").read_text())
        cur = next(iter(s["totals"]))
        s["totals"][cur]["net"] = str(Decimal(s["totals"][cur]["net"]) + Decimal("0.01"))
        (run / "summary.json").write_text(json.dumps(s))

    def rejected_twice(st: dict[str, Any], run: Path) -> None:
        with open(run / "failed.ndjson", "ab") as f:
            f.write(next(iter(job.bad.values()))[0] + b"\n")

    for change, says in [(twice, "2 invoices at the API"), (item, "items differ"), (status, "status"),
                         (id_map_row, "more than once"), (totals, "summary.json totals"),
                         (rejected_twice, "failed.ndjson")]:
        problems = damaged(change)
        assert any(says in p for p in problems), (change.__name__, problems)
