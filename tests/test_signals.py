"""SIGINT and SIGTERM, per target, through the CLI: stop reading, let the requests in flight
finish (or, on a second signal, abandon them safely), flush the resume file and the outputs,
exit 130; the same command then resumes and finishes exactly once."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from harness import (
    SandboxServer,
    assert_counts,
    assert_outputs_whole,
    created_count,
    in_flight,
    read_id_map,
    resume_to_the_end,
    start_cli,
    stop,
    summary,
    support,
    upload_args,
    wait_until,
    write_input,
)
from hostile_proxy import HostileProxy

import bulk.targets
from bulk._runlock import LOCK_NAME

TARGETS = bulk.targets.names()  # the registered targets (entry points included)
FIRST_SIGNAL_NOTE = "again to stop now"  # the CLI's note once it has taken in a first signal


def read_stderr(proc: subprocess.Popen[str]) -> tuple[list[str], threading.Thread]:
    """Collect ``proc``'s stderr lines as they come (a test can wait for one), in a thread."""
    lines: list[str] = []

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return lines, reader


# Each target with one of the two signals in the default run (the handling is the engine's; the
# target decides what "in flight" means); every pair with ``pytest -m slow``.
CASES = [
    pytest.param(target, signum, id=f"{target}-{signum.name}",
                 marks=() if (i + j) % 2 == 0 else pytest.mark.slow)
    for i, target in enumerate(TARGETS) for j, signum in enumerate([signal.SIGINT, signal.SIGTERM])
]


@pytest.mark.parametrize(("target", "signum"), CASES)
def test_signal_stops_gracefully_then_resumes(target: str, signum: signal.Signals, tmp_path: Path) -> None:
    src, out = tmp_path / "in.ndjson", tmp_path / "run"
    records = write_input(src, 30, seed=201)
    with SandboxServer(target, latency_ms=150) as sb:
        args = upload_args(sb, src, out, "--concurrency", "4")
        proc = start_cli(args, sb.env)
        try:
            wait_until(lambda: created_count(sb) >= 4, timeout=30, what="the first invoices")
            proc.send_signal(signum)
            _, stderr = proc.communicate(timeout=30)  # a hang bound, not a measurement
        finally:
            stop(proc)
        assert proc.returncode == 130, stderr
        assert "interrupted" in stderr and "run the same command again" in stderr, stderr
        # Requests in flight were let finish, not cancelled (as the grace's end would): their
        # outcomes are in the outputs: the ID map equals what the server holds
        # (once the server has answered everything it received: nothing more can commit).
        wait_until(lambda: in_flight(sb) == 0, timeout=30, what="the server to answer every request")
        server = {i["external_id"]: str(i["id"]) for i in support(target).invoices(sb.state())}
        assert {r["external_id"]: r["invoice_id"] for r in read_id_map(out)} == server
        assert len(server) < len(records), "the signal came too late to prove anything"
        s = summary(out)
        assert s["complete"] is False and s["records"]["created"] == len(server)
        assert (s["records"]["failed"], s["records"]["uncertain"]) == (0, 0), s["records"]
        assert_outputs_whole(out)

        sb.faults(latency_ms=0)
        resume_to_the_end(sb, args, out, records)
    assert_counts(out, records)


@pytest.mark.parametrize("target", TARGETS)
def test_second_signal_abandons_requests_in_flight_safely(target: str, tmp_path: Path) -> None:
    """A request is held on its way to the server (by a proxy that forwards everything else
    faithfully); the second SIGINT does not wait for it: the run exits while the proxy still
    holds it, however slow the machine. The request then reaches the server late and commits;
    the resumed run reconciles it, never duplicates it. Every step waits for progress (the
    held request, the CLI's note on the first signal), not for a guessed time."""
    src, out = tmp_path / "in.ndjson", tmp_path / "run"
    records = write_input(src, 20, seed=202)
    with SandboxServer(target, latency_ms=20) as sb, HostileProxy(sb.base_url, seed=202, rates={}) as px:
        args = upload_args(sb, src, out, "--concurrency", "4", via=px)
        proc = start_cli(args, sb.env)
        lines, reader = read_stderr(proc)
        try:
            wait_until(lambda: proc.poll() is not None or created_count(sb) >= 2, timeout=60, what="the first invoices")
            hold = px.hold_after(1)
            wait_until(lambda: proc.poll() is not None or hold.reached.is_set(), timeout=60,
                       interval=0.005, what="a request held on its way to the server")
            proc.send_signal(signal.SIGINT)
            wait_until(lambda: proc.poll() is not None or any(FIRST_SIGNAL_NOTE in line for line in lines),
                       timeout=60, interval=0.005, what="the CLI to take in the first signal")
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)  # it waits forever for the held request unless it abandons it
            reader.join(30)
        finally:
            stop(proc)
            px.release_all()
        stderr = "".join(lines)
        assert proc.returncode == 130, stderr
        assert FIRST_SIGNAL_NOTE in stderr, stderr
        assert hold.reached.is_set(), "no request was in flight when the signals came"
        s = summary(out)
        assert s["complete"] is False
        assert (s["records"]["failed"], s["records"]["uncertain"]) == (0, 0), s["records"]
        assert_outputs_whole(out)

        px.drain()  # the abandoned request has reached the server and been answered
        wait_until(lambda: in_flight(sb) == 0, timeout=30, what="the abandoned requests to finish at the server")
        resume_to_the_end(sb, args, out, records)
    assert_counts(out, records)


def _holds_open(pid: int, path: Path) -> bool:
    """Whether process ``pid`` has ``path`` open (Linux: its /proc fd table)."""
    fds = Path(f"/proc/{pid}/fd")
    try:
        return any(os.path.realpath(fd) == str(path) for fd in fds.iterdir())
    except (FileNotFoundError, ProcessLookupError):
        return False  # the process is gone, or not there yet


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads another process's open files in /proc")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_before_the_run_stops_the_command_cleanly(signum: signal.Signals, tmp_path: Path) -> None:
    """The earliest signal that can meet the event loop: the CLI waits for the run directory's
    lock (held here, as another bulk process would) before anything is sent. The signal stops
    it there: exit 130, said how to resume, no traceback, nothing sent; once the lock is free
    the same command finishes exactly once. (Before, SIGTERM killed it unannounced (-15), and
    SIGINT went through asyncio.Runner's cancel: 130 with a bare "interrupted".) Triggered on
    progress: the CLI has the lock file open, waiting. It waits up to 5 s for the lock; a test
    process so loaded that its signal comes after that (the CLI then refuses: "another bulk
    process is still uploading", exit 2) has not tried the case, and tries again (at most 5
    times): every attempt whose signal met the wait is checked in full."""
    src, out = tmp_path / "in.ndjson", tmp_path / "run"
    records = write_input(src, 8, seed=203)
    out.mkdir()
    lock_path = (out / LOCK_NAME).resolve()
    with SandboxServer("agiled") as sb, open(lock_path, "a+b") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        args = upload_args(sb, src, out)
        for _attempt in range(5):
            proc = start_cli(args, sb.env)
            try:
                wait_until(lambda p=proc: p.poll() is not None or _holds_open(p.pid, lock_path), timeout=60,
                           interval=0.005, what="the CLI to wait for the run directory's lock")
                proc.send_signal(signum)
                _, stderr = proc.communicate(timeout=30)  # a hang bound, not a measurement
            finally:
                stop(proc)
            if not (proc.returncode == 2 and "another bulk process is still uploading" in stderr):
                break  # the signal met the wait (or something else happened: checked below)
        assert proc.returncode == 130, stderr
        assert "interrupted: run the same command again to resume" in stderr, stderr
        assert "Traceback" not in stderr, stderr
        assert sb.state()["requests"]["total"] == 0, "a request was sent before the run started"
        fcntl.flock(held, fcntl.LOCK_UN)
        resume_to_the_end(sb, args, out, records)
    assert_counts(out, records)


def test_a_signal_just_before_the_runs_watcher_is_kept_for_it() -> None:
    """From ``Hub.to_run`` (the run directory locked) until the run's watcher is up, a signal
    is queued for the run, not lost nor turned into a cancel: the watcher, however late it
    starts, takes both at once (stop, then stop now). Real signals to this process, through
    the event loop the CLI uses; each sent once the one before has arrived."""
    import anyio

    from bulk._signals import taken, watch
    from bulk.config import loop_options

    class Run:
        stopping = False

    async def go() -> tuple[bool, list[bool], bool]:
        run, cancelled = Run(), []
        async with taken() as hub:
            hub.to_run()
            with anyio.fail_after(30):  # a hang bound only
                for n in (1, 2):
                    os.kill(os.getpid(), signal.SIGINT)
                    while len(hub._pending) < n:  # noqa: ASYNC110 - the hub signals no event
                        await anyio.sleep(0.005)
                await watch(run, None, lambda: cancelled.append(True))
        return run.stopping, cancelled, hub.interrupted

    # off the main thread the loop cannot take signals, and SIGINT would stop the test session
    assert threading.current_thread() is threading.main_thread()
    assert anyio.run(go, backend_options=loop_options()) == (True, [True], False)


def test_the_processes_watcher_leaves_the_hubs_handlers_in_place() -> None:
    """``--processes N``: the parent's watcher (bulk.procs) forwards the hub's signals, and when
    it ends (the shard workers done) a signal still meets the hub, not Python's default handler
    (a KeyboardInterrupt during the merge and report; SIGTERM's default, the parent killed).
    Real signals to this process through the CLI's event loop; each awaited by its arrival."""
    import anyio

    from bulk._signals import taken
    from bulk.config import loop_options
    from bulk.procs import _watch_signals

    async def go() -> tuple[list[signal.Signals], int, bool]:
        forwarded: list[signal.Signals] = []
        async with taken() as hub:
            hub.to_run()
            with anyio.fail_after(30):  # a hang bound only
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_watch_signals, forwarded.append)
                    while hub._watcher is None:  # noqa: ASYNC110 - the hub signals no event
                        await anyio.sleep(0.005)
                    os.kill(os.getpid(), signal.SIGTERM)
                    while not forwarded:  # noqa: ASYNC110
                        await anyio.sleep(0.005)
                    tg.cancel_scope.cancel()
                os.kill(os.getpid(), signal.SIGINT)  # the merge and report: the first is ignored
                while hub._after_end < 1:  # noqa: ASYNC110
                    await anyio.sleep(0.005)
        return forwarded, hub._after_end, hub.interrupted

    assert threading.current_thread() is threading.main_thread()
    assert anyio.run(go, backend_options=loop_options()) == ([signal.SIGTERM], 1, False)


def test_after_the_runs_watcher_a_first_signal_is_ignored_a_second_exits_at_once(tmp_path: Path) -> None:
    """Once the run's watcher has ended (the run writes its last checkpoint and report), the
    first signal is ignored; a second exits 130 at once, without cleanup (a hung final fsync
    must not need SIGKILL). Hub.deliver directly, in a process of its own (it exits)."""
    script = tmp_path / "hub.py"
    script.write_text(
        "import signal, anyio\n"
        "from bulk._signals import Hub\n"
        "async def main():\n"
        "    with anyio.CancelScope() as scope:\n"
        "        hub = Hub(scope)\n"
        "        hub.to_run()\n"
        "        with hub.attached():\n"
        "            pass\n"
        "        hub.deliver(signal.SIGINT)\n"
        "        print('ignored', hub.interrupted, scope.cancel_called, flush=True)\n"
        "        hub.deliver(signal.SIGTERM)\n"
        "    print('not reached', flush=True)\n"
        "anyio.run(main)\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout) == (130, "ignored False False\n"), done.stderr


def test_taken_lets_the_bodys_exception_keep_its_cause() -> None:
    """The hub's task group wraps the body's exception; ``taken`` unwraps it without touching
    its ``__cause__`` or ``__suppress_context__`` (a ``raise ... from None`` would drop them)."""
    import anyio

    from bulk._signals import taken
    from bulk.config import loop_options

    cause = OSError("disk")

    async def go() -> None:
        async with taken():
            raise RuntimeError("wrapped") from cause

    with pytest.raises(RuntimeError) as info:
        anyio.run(go, backend_options=loop_options())
    assert info.value.__cause__ is cause and info.value.__suppress_context__
