"""``--processes N``: the job run as N shard workers and merged (``bulk.procs``), for every target.

The same guarantees as one process, checked through the CLI against the sandboxes: every
record once, every customer once (records of one customer go to one shard), the ID map and
totals equal to the server's, a SIGKILL of the run at any moment (its workers die with it)
and a SIGINT both resume exactly once; a worker that dies or aborts stops the run resumably.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path

import orjson
import pytest
from harness import (
    REPO,
    SandboxServer,
    assert_counts,
    assert_exactly_once,
    assert_outputs_whole,
    cli,
    client_env,
    created_count,
    in_flight,
    kill_until_done,
    read_id_map,
    resume_to_the_end,
    run_until,
    start_cli,
    stop,
    summary,
    upload_args,
    wait_until,
    write_input,
)
from hostile_proxy import HostileProxy

import bulk.targets
from bulk.config import Shard, UploadConfig
from bulk.generate import generate
from bulk.procs import WorkerTask

TARGETS = bulk.targets.names()  # the registered targets (entry points included)
CUSTOMERS = {"agiled": "contacts", "anny": "customers", "chargeover": "customers"}  # coperniq's are seeded


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("target", TARGETS)
def test_two_processes_create_every_record_and_customer_once(target: str, tmp_path: Path) -> None:
    src, out = tmp_path / "in.ndjson", tmp_path / "run"
    records = write_input(src, 90, seed=810 + TARGETS.index(target))
    with SandboxServer(target, latency_ms=5) as sb:
        done = cli(upload_args(sb, src, out, "--processes", "2", "--concurrency", "8"), sb.env)
        assert done.returncode == 0, done.stderr
        assert_exactly_once(sb, out, records)
        state = sb.state()
        if target in CUSTOMERS:
            # Single flight across processes: one create per customer, however many invoices share it.
            assert len(state[CUSTOMERS[target]]) == len({r.customer.external_id for r in records})
        s = summary(out)
        assert s["processes"] == 2
        if target in CUSTOMERS:
            # Each shard holds whole customers: no customer's invoices are in two shards' ID maps.
            by_shard = [{row["customer_id"] for row in read_id_map(d)} for d in sorted((out / "shards").iterdir())]
            assert len(by_shard) == 2 and all(by_shard) and not by_shard[0] & by_shard[1], by_shard
        # The children's traffic is counted: every request the server saw, and no more.
        assert s["requests"] == state["requests"]["total"]
    assert_counts(out, records)
    assert_outputs_whole(out)


@pytest.mark.parametrize("target", TARGETS)
def test_sigkill_of_the_run_kills_its_children_and_resumes_exactly_once(target: str, tmp_path: Path) -> None:
    src, out = tmp_path / "in.ndjson", tmp_path / "run"
    records = write_input(src, 70, seed=820 + TARGETS.index(target))
    with SandboxServer(target, latency_ms=20, seed=5) as sb, HostileProxy(sb.base_url, seed=5, rates={}) as proxy:
        def args_for(rng: random.Random) -> list[str]:
            return upload_args(sb, src, out, "--processes", "2", "--concurrency", str(rng.choice([4, 8])), via=proxy)

        kills = kill_until_done(sb, proxy, args_for, kills=4, seed=830 + TARGETS.index(target), records=len(records))
        assert kills.done.returncode == 0, kills.done.stderr
        assert kills.delivered == 4, f"only {kills.delivered} of 4 kills landed (exits {kills.exits})"
        assert_exactly_once(sb, out, records)
    assert_counts(out, records)
    assert_outputs_whole(out)


def test_children_die_with_a_killed_run(tmp_path: Path) -> None:
    src, out = tmp_path / "in.ndjson", tmp_path / "run"
    write_input(src, 200, seed=840)
    with SandboxServer("agiled", latency_ms=50) as sb:
        proc = start_cli(upload_args(sb, src, out, "--processes", "3", "--concurrency", "6"), sb.env)
        try:
            wait_until(lambda: created_count(sb) >= 3, timeout=30, what="the first invoices")
            kids = _children(proc.pid)
            assert len(kids) == 3, kids  # one worker per shard; the parent supervises and merges
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=30)
            wait_until(lambda: not any(_alive(k) for k in kids), timeout=5, what="the children to die")
            # what was already sent lands: the server holds nothing more that could commit
            wait_until(lambda: in_flight(sb) == 0, timeout=30, what="the server to finish what was sent")
            made = created_count(sb)
            time.sleep(0.5)
            assert created_count(sb) == made, "a child of the killed run kept creating invoices"
        finally:
            stop(proc)


@pytest.mark.parametrize("target", ["agiled", "anny"])
def test_sigint_finishes_in_flight_in_every_process_then_resumes(target: str, tmp_path: Path) -> None:
    src, out = tmp_path / "in.ndjson", tmp_path / "run"
    records = write_input(src, 80, seed=850)
    with SandboxServer(target, latency_ms=100) as sb:
        args = upload_args(sb, src, out, "--processes", "2", "--concurrency", "4")
        code, stderr = run_until(sb, args, created=4, then=lambda proc: proc.send_signal(signal.SIGINT))
        assert code == 130, stderr
        s = summary(out)
        assert s["complete"] is False and 0 < s["records"]["created"] < len(records)
        assert (s["records"]["failed"], s["records"]["uncertain"]) == (0, 0), s["records"]
        # Everything the children finished is in the ID map: no invoice at the server is missing from it.
        assert s["records"]["created"] == created_count(sb)
        assert_outputs_whole(out)

        sb.faults(latency_ms=0)
        resume_to_the_end(sb, args, out, records)
    assert_counts(out, records)


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _signal_mask(pid: int, field: str) -> int:
    """A /proc/PID/status signal mask (SigBlk, SigCgt...) as an int; 0 once the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((int(ln.split()[1], 16) for ln in f if ln.startswith(field + ":")), 0)
    except OSError:
        return 0


# A host process that runs a thread when it calls bulk.cli.main: bulk cannot fork its workers
# safely then (bulk._procfork), so it spawns them (the fallback, also where there is no fork).
THREADED_CLI = ("import sys, threading, bulk.cli; threading.Thread(target=threading.Event().wait, daemon=True)"
                ".start(); sys.exit(bulk.cli.main())")


def test_a_signal_forwarded_while_spawned_workers_still_start_stops_the_run_resumably(tmp_path: Path) -> None:
    """SIGTERM reaches the run once the parent handles it (SIGTERM in its caught set) and both
    spawned workers exist but neither handles SIGTERM yet (not in their caught set: still
    importing): the parent forwards it at once, and each worker must take it when its run is
    ready to stop cleanly instead of dying of it (which ended the run 3, "killed by signal 15")."""
    src, out = tmp_path / "in.ndjson", tmp_path / "run"
    records = write_input(src, 40, seed=851)
    term = 1 << (signal.SIGTERM - 1)
    with SandboxServer("agiled") as sb:
        args = upload_args(sb, src, out, "--processes", "2", "--concurrency", "4")
        proc = subprocess.Popen([sys.executable, "-c", THREADED_CLI, *args], env=client_env(sb.env),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        try:
            wait_until(lambda: proc.poll() is not None or (
                _signal_mask(proc.pid, "SigCgt") & term and len(_children(proc.pid)) == 2), timeout=30,
                what="the workers to start")
            children = _children(proc.pid)
            early = [k for k in children if not _signal_mask(k, "SigCgt") & term]
            spawned = [k for k in children if "worker_main" in _cmdline(k)]
            proc.send_signal(signal.SIGTERM)
            _, stderr = proc.communicate(timeout=60)
        finally:
            stop(proc)
        assert len(spawned) == 2, "a threaded host's workers are spawned (python -c ... worker_main), not forked"
        assert early, "both workers handled SIGTERM already: the test missed the moment it is about"
        assert proc.returncode == 130, stderr
        assert "ended unexpectedly" not in stderr
        resume_to_the_end(sb, args, out, records)
    assert_counts(out, records)


def _term_with_the_workers_stopped_idle(args: list[str], env: dict[str, str]) -> tuple[bool, int, str]:
    """One run: its forked workers SIGSTOPped as soon as they exist; if they were idle then, SIGTERM
    to the parent once it said it runs the processes; then SIGCONT. (idle, exit code, stderr)."""
    term = 1 << (signal.SIGTERM - 1)
    proc = start_cli(args, env)
    lines: list[str] = []
    assert proc.stderr is not None
    reader = threading.Thread(target=lines.extend, args=(proc.stderr,), daemon=True)
    try:
        wait_until(lambda: proc.poll() is not None or len(_children(proc.pid)) == 2, timeout=30,
                   interval=0.001, what="the workers to be forked")
        workers = _children(proc.pid)
        for k in workers:
            os.kill(k, signal.SIGSTOP)
        reader.start()
        # forked: the parent's own command line, not a spawned python -c; SIGTERM blocked from birth
        assert all("worker_main" not in _cmdline(k) and "upload" in _cmdline(k) for k in workers)
        assert all(_signal_mask(k, "SigBlk") & term for k in workers)
        idle = not any(_signal_mask(k, "SigCgt") & term for k in workers)
        if idle:
            wait_until(lambda: proc.poll() is not None or any("upload processes" in ln for ln in lines),
                       timeout=30, what="the parent to run the processes")
            proc.send_signal(signal.SIGTERM)
        for k in workers:
            os.kill(k, signal.SIGCONT)
        proc.wait(timeout=60)
        reader.join(timeout=10)
    finally:
        stop(proc)
    return idle, proc.returncode, "".join(lines)


def test_a_signal_forwarded_before_forked_workers_handle_it_stops_the_run_resumably(tmp_path: Path) -> None:
    """The forked workers (bulk._procfork) exist before the parent's event loop, idle until
    handed their shards. Stopped (SIGSTOP) while idle, they cannot get to handling SIGTERM; the
    parent's note that it runs the processes is said just before a signal becomes the run's
    (no await between them): SIGTERM then is forwarded to workers that do not handle it yet,
    and each must take it once its run can stop cleanly, not die of it."""
    src = tmp_path / "in.ndjson"
    records = write_input(src, 40, seed=852)
    for attempt in range(5):  # the workers must be caught idle: the parent hands them work ms later
        out = tmp_path / f"run{attempt}"
        with SandboxServer("agiled") as sb:
            args = upload_args(sb, src, out, "--processes", "2", "--concurrency", "4")
            idle, code, stderr = _term_with_the_workers_stopped_idle(args, sb.env)
            if not idle:
                assert code == 0, stderr  # it ran unsignalled: again, from the start
                continue
            assert code == 130, stderr
            assert "ended unexpectedly" not in stderr and "killed by signal" not in stderr, stderr
            resume_to_the_end(sb, args, out, records)
        assert_counts(out, records)
        return
    pytest.fail("the forked workers were never caught idle")


def test_a_resumed_run_does_not_resolve_again_what_an_earlier_run_resolved(tmp_path: Path) -> None:
    """Customers resolved before an interruption are in the shards' state.db; on resume the workers read
    them there instead of looking them up again. Counted at the server: the resumed
    run sends each worker's auth check, the remaining invoices, and lookups only for customers that were
    never resolved (one GET when the contact exists, GET + POST when it does not)."""
    src, out = tmp_path / "in.ndjson", tmp_path / "run"
    records = write_input(src, 150, seed=880)
    with SandboxServer("agiled", latency_ms=30) as sb:
        args = upload_args(sb, src, out, "--processes", "2", "--concurrency", "6")
        code, stderr = run_until(sb, args, created=40, then=lambda proc: proc.send_signal(signal.SIGINT))
        assert code == 130, stderr
        resolved = set()
        for db_path in (out / "shards").glob("*/state.db"):  # each shard's resume file
            with sqlite3.connect(db_path) as db:
                resolved |= {k for (k,) in db.execute("SELECT k FROM resolved WHERE ns='agiled.contact'")}
        done_ids = {row["external_id"] for row in read_id_map(out)}
        remaining = [r for r in records if r.external_id not in done_ids]
        state = sb.state()
        assert resolved and remaining
        known_emails = {c["email"].lower() for c in state["contacts"]}
        unresolved = {r.customer.external_id: r.customer.email.lower() for r in remaining
                      if r.customer.external_id not in resolved}
        lookups = sum(1 if email in known_emails else 2 for email in unresolved.values())
        before = state["requests"]["total"]

        resume_to_the_end(sb, args, out, records)
        # one auth check per shard worker (2), the remaining invoices, the lookups never made
        assert sb.state()["requests"]["total"] - before == 2 + len(remaining) + lookups
    assert_counts(out, records)


@pytest.mark.parametrize("held", ["job", "shard", "one-process job"])
def test_a_run_refuses_a_directory_another_live_process_uploads_into(held: str, tmp_path: Path) -> None:
    """A process that still holds the job's directory (a second run of the same command) or a
    shard's (a killed run's worker still alive, e.g. where no PR_SET_PDEATHSIG kills it):
    after bulk._runlock's wait the run refuses (exit 2) before any shard sends anything; once the
    holder is gone, the same command finishes exactly once."""
    src, out = tmp_path / "in.ndjson", tmp_path / "run"
    records = write_input(src, 30, seed=845)
    locked = out / "shards" / "1of2" if held == "shard" else out
    processes = "1" if held == "one-process job" else "2"
    locked.mkdir(parents=True)
    with subprocess.Popen([sys.executable, "-c", "import fcntl, sys; f = open(sys.argv[1], 'a+b'); "
                           "fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True); sys.stdin.read()",
                           str(locked / "upload.lock")], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          text=True) as holder:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        with SandboxServer("agiled") as sb:
            args = upload_args(sb, src, out, "--processes", processes, "--concurrency", "4")
            refused = cli(args, sb.env)
            assert refused.returncode == 2, refused.stderr
            assert f"another bulk process is still uploading into {locked}" in refused.stderr, refused.stderr
            assert not (out / "shards" / "1of2" / "state.db").exists()  # shard 1 never started
            # nothing started at all: the parent checks every shard's lock before any worker starts
            assert created_count(sb) == 0
            assert not (out / "state.db").exists() and not (out / "shards" / "0of2" / "state.db").exists()
            assert holder.stdin is not None
            holder.stdin.close()
            holder.wait(timeout=30)
            resume_to_the_end(sb, args, out, records)
    assert_counts(out, records)


def test_a_child_that_dies_stops_the_run_resumably(tmp_path: Path) -> None:
    src, out = tmp_path / "in.ndjson", tmp_path / "run"
    records = write_input(src, 120, seed=860)
    with SandboxServer("agiled", latency_ms=50) as sb:
        args = upload_args(sb, src, out, "--processes", "2", "--concurrency", "4")
        code, stderr = run_until(sb, args, created=4,
                                 then=lambda proc: os.kill(_children(proc.pid)[0], signal.SIGKILL))
        assert code == 3, stderr
        assert "upload process" in stderr and "ended unexpectedly" in stderr and "resume" in stderr, stderr
        assert summary(out)["complete"] is False
        assert_outputs_whole(out)
        resume_to_the_end(sb, args, out, records)
    assert_counts(out, records)


def test_an_abort_in_a_child_stops_the_run_with_its_message(tmp_path: Path) -> None:
    """A 429 asking for an hour, beyond --max-wait, inside a child: the parent stops (exit 3)
    with the child's own message and moment to resume; the same command then finishes."""
    src, out = tmp_path / "in.ndjson", tmp_path / "run"
    records = write_input(src, 40, seed=870)
    with SandboxServer("agiled", latency_ms=20, retry_after_override=3600) as sb:
        args = upload_args(sb, src, out, "--processes", "2", "--concurrency", "4", "--max-wait", "60")
        code, stderr = run_until(sb, args, created=3, then=lambda proc: sb.faults(throttle_rate=1.0))
        assert code == 3, stderr
        assert "--max-wait" in stderr and "resume after" in stderr, stderr
        s = summary(out)
        assert (s["records"]["failed"], s["records"]["uncertain"]) == (0, 0), s["records"]

        sb.faults(throttle_rate=0.0)
        resume_to_the_end(sb, args, out, records)
    assert_counts(out, records)


# --- the seams ---------------------------------------------------------------------------------------------------


def test_a_worker_task_crosses_the_process_boundary_whole(tmp_path: Path) -> None:
    config = UploadConfig(input=str(tmp_path / "in.ndjson"), out=tmp_path / "run" / "shards" / "1of2",
                          shard=Shard(1, 2), limits={"write": 3.0}, options={"bulk": "false"}, rate=7.5)
    task = WorkerTask(config=config, target="chargeover", base_url="http://127.0.0.1:9/",
                      credentials={"public": "pk-12345678", "private": "sk-12345678"}, options={"bulk": "false"},
                      default_limits={"write": 1.0}, parent_pid=os.getpid(),
                      quota_share=str(tmp_path / "run" / "quota.bin"))
    back = WorkerTask.from_bytes(task.to_bytes())
    assert back == task
    assert back.config.pacing_limits({}) == {"*": 7.5 / 2, "write": 1.5}  # its shard's part of the budget


def _config(tmp_path: Path, size: int, **kw: object) -> UploadConfig:
    src = tmp_path / "in.ndjson"
    src.write_bytes(b"x" * size)
    return UploadConfig(input=str(src), out=tmp_path / "run", **kw)  # type: ignore[arg-type]


def test_auto_is_one_process_as_measured_and_n_is_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """auto: one process below 4 MiB of input on any machine (a second one does not win back its
    start-up there: README, Processes); an explicit N is given, at most one per unit of --concurrency."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7})
    big = (4 << 20) - 1
    assert _config(tmp_path, big, processes=0).processes_for() == 1
    assert _config(tmp_path, big, processes=0, rate=1e6).processes_for() == 1
    assert _config(tmp_path, 10, processes=3).processes_for() == 3  # asked for: given
    assert _config(tmp_path, 10, processes=3, concurrency=2).processes_for() == 2


def test_a_job_keeps_its_number_of_processes(tmp_path: Path) -> None:
    src, out = tmp_path / "in.ndjson", tmp_path / "run"
    records = write_input(src, 12, seed=890)
    with SandboxServer("agiled") as sb:
        assert cli(upload_args(sb, src, out, "--processes", "2"), sb.env).returncode == 0
        other = cli(upload_args(sb, src, out, "--processes", "3"), sb.env)
        assert other.returncode == 2 and "--processes 2" in other.stderr, other.stderr
        again = cli(upload_args(sb, src, out), sb.env)  # auto: the job's own 2
        assert again.returncode == 0, again.stderr
        assert summary(out)["processes"] == 2
        assert_exactly_once(sb, out, records)
        piped = cli(upload_args(sb, Path("-"), tmp_path / "piped", "--processes", "2"), sb.env)
        assert piped.returncode == 2 and "not stdin" in piped.stderr, piped.stderr
        sharded = cli(upload_args(sb, src, tmp_path / "sharded", "--processes", "2", "--shard", "0/2"), sb.env)
        assert sharded.returncode == 2 and "without --shard" in sharded.stderr, sharded.stderr



def test_metrics_port_on_an_input_auto_would_split_runs_one_process(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """--metrics-port without --processes on an input big enough for auto's 2 processes: one
    process runs (the endpoint serves one process's figures) instead of a usage error about
    --processes, which the user never gave."""
    src, out = tmp_path / "in.ndjson", tmp_path / "run"
    records = write_input(src, 6, seed=905)
    with src.open("ab") as f:  # blank lines (skipped) make the input 5 MiB, over auto's 4 MiB
        f.write((b" " * ((1 << 20) - 2) + b"\n") * 5)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert UploadConfig(input=str(src), out=out, processes=0).processes_for() == 2  # what auto takes without it
    with SandboxServer("agiled") as sb:
        done = cli(upload_args(sb, src, out, "--metrics-port", "0", "--concurrency", "2"), sb.env)
        assert done.returncode == 0, done.stderr
        assert_counts(out, records)
        assert not (out / "shards").exists() and summary(out).get("processes", 1) == 1


def test_a_resumed_n_process_job_refuses_what_needs_one_process(tmp_path: Path) -> None:
    """A job of N processes resumed without --processes (auto resumes its N) still refuses the
    options judged in one process, before anything starts (exit 2), as an explicit
    --processes N does."""
    src, out = tmp_path / "in.ndjson", tmp_path / "run"
    write_input(src, 20, seed=901)
    with SandboxServer("agiled") as sb:
        assert cli(upload_args(sb, src, out, "--processes", "2"), sb.env).returncode == 0
        before = sb.state()["requests"]["total"]
        for extra in (["--threshold", "write.p99<1ms"], ["--arrival-rate", "10"], ["--metrics-port", "0"]):
            done = cli(upload_args(sb, src, out, *extra), sb.env)
            assert done.returncode == 2, (extra, done.stderr)
            assert "a job of 2 processes" in done.stderr, done.stderr
        assert sb.state()["requests"]["total"] == before  # nothing was sent


def test_on_existing_reaches_every_upload_process(tmp_path: Path) -> None:
    """--on-existing update with --processes 2: the workers update what the API holds, as one
    process does (the option is taken out of the target's options, so it must be handed on)."""
    first, second = tmp_path / "first.ndjson", tmp_path / "second.ndjson"
    lines = [orjson.loads(line) for line in generate(20, seed=902)]
    first.write_bytes(b"".join(orjson.dumps(d) + b"\n" for d in lines))
    for d in [d for d in lines if d.get("status") != "paid"][:5]:  # Agiled refuses to change a paid one
        d["lines"][0]["unit_price"] = str(Decimal(str(d["lines"][0]["unit_price"])) + 1)
    second.write_bytes(b"".join(orjson.dumps(d) + b"\n" for d in lines))
    with SandboxServer("agiled") as sb:
        assert cli(upload_args(sb, first, tmp_path / "run1"), sb.env).returncode == 0
        done = cli(upload_args(sb, second, tmp_path / "run2", "--processes", "2", "--on-existing", "update"), sb.env)
        assert done.returncode == 0, done.stderr
        r = summary(tmp_path / "run2")["records"]
        assert (r["updated"], r["unchanged"]) == (5, 15), r
        actions = {row["external_id"]: row["action"] for row in read_id_map(tmp_path / "run2")}
        assert sorted(a for a in actions.values()) == ["unchanged"] * 15 + ["updated"] * 5


def test_a_shard_begun_with_line_number_reports_keeps_that_rule(tmp_path: Path) -> None:
    """A shard job begun before placed lines were skipped (checkpoint split rule "affinity":
    every rejected line reported by its line number's shard) resumes under that rule to its
    end: switching mid-job would report a line twice or never. A new shard job records
    today's rule."""
    src, out = tmp_path / "in.ndjson", tmp_path / "s1"
    write_input(src, 20, seed=906)

    def split_rule() -> str:
        with sqlite3.connect(out / "state.db") as db:
            (doc,) = db.execute("SELECT v FROM meta WHERE k='checkpoint'").fetchone()
        return str(orjson.loads(doc)["shard_by"])

    with SandboxServer("agiled") as sb:
        assert cli(upload_args(sb, src, out, "--shard", "1/2"), sb.env).returncode == 0
        assert split_rule() == "affinity;placed"
        with sqlite3.connect(out / "state.db") as db:  # as the version before wrote it
            (doc,) = db.execute("SELECT v FROM meta WHERE k='checkpoint'").fetchone()
            db.execute("UPDATE meta SET v=? WHERE k='checkpoint'", (orjson.dumps({**orjson.loads(doc),
                                                                                  "shard_by": "affinity"}),))
        done = cli(upload_args(sb, src, out, "--shard", "1/2"), sb.env)
        assert done.returncode == 0, done.stderr
        assert split_rule() == "affinity"


def test_a_shard_split_by_an_earlier_rule_is_refused_on_resume_and_in_merge(tmp_path: Path) -> None:
    """Earlier versions split records among shards by external id; today by the customer. A
    shard checkpoint without today's rule is refused on resume and by bulk merge (resuming it
    would repeat some records and skip others)."""
    src = tmp_path / "in.ndjson"
    write_input(src, 20, seed=903)
    shards = [tmp_path / f"s{k}" for k in range(2)]
    with SandboxServer("agiled") as sb:
        for k, out in enumerate(shards):
            assert cli(upload_args(sb, src, out, "--shard", f"{k}/2"), sb.env).returncode == 0
        with sqlite3.connect(shards[1] / "state.db") as db:  # as an earlier version wrote it
            (doc,) = db.execute("SELECT v FROM meta WHERE k='checkpoint'").fetchone()
            cp = orjson.loads(doc)
            del cp["shard_by"]
            db.execute("UPDATE meta SET v=? WHERE k='checkpoint'", (orjson.dumps(cp),))
        done = cli(upload_args(sb, src, shards[1], "--shard", "1/2"), sb.env)
        assert done.returncode == 2 and "earlier version" in done.stderr, done.stderr
        merged = cli(["merge", *map(str, shards), "--out", str(tmp_path / "m")], sb.env)
        assert merged.returncode == 2 and "split rule" in merged.stderr, merged.stderr
