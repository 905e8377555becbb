"""Test harness: a real sandbox server on 127.0.0.1:0 in a background thread, and the CLI in a
subprocess (the real entry point, real sockets, real signals). No mocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import importlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from types import ModuleType
from typing import Any, AnyStr

import pytest
from hostile_proxy import HostileProxy

from bulk.embedded import pairing
from bulk.generate import generate
from bulk.money import CurrencyTotals
from bulk.records import Record, parse_record
from bulk.sandbox import serve
from bulk.sandbox._site import TCPSite
from bulk.sandbox.config import SandboxConfig
from bulk.targets import get_target

SECRET = "tok-Sup3rS3cret-0123456789abcdef"
REPO = Path(__file__).resolve().parent.parent


def support(target: str) -> ModuleType:
    """tests/support/<target>.py: how this target's sandbox state maps back to our records."""
    return importlib.import_module(f"support.{target}")


class SandboxServer:
    """``with SandboxServer("agiled", rate_limit=5) as sb:`` -> sb.base_url, sb.state(), sb.faults()."""

    def __init__(self, target: str, *, secret: str = SECRET, **settings: Any) -> None:
        pair = pairing(get_target(target))  # how the client meets its dialect (bulk.embedded)
        self.target = target
        self.env, token = pair.credentials(secret)
        options = {**pair.dialect_options(), **settings.pop("options", {})}
        self.config = SandboxConfig(token=token, options=options, **settings)
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.base_url = ""
        self._error: BaseException | None = None

    def _main(self) -> None:
        async def run() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            async with serve(self.target, self.config) as sb:
                self.base_url = sb.base_url
                self._ready.set()
                await self._stop.wait()

        try:
            asyncio.run(run())
        except BaseException as exc:  # surfaced by __enter__
            self._error = exc
            self._ready.set()

    def __enter__(self) -> SandboxServer:
        self._thread.start()
        if not self._ready.wait(15) or self._error is not None:
            raise RuntimeError(f"sandbox did not start: {self._error!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base_url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def state(self) -> dict[str, Any]:
        return self._call("GET", "/_sandbox/state")

    def faults(self, **changes: Any) -> dict[str, Any]:
        return self._call("POST", "/_sandbox/faults", changes)


def client_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_BASE_URL")}
    env.update(extra)
    env["PYTHONPATH"] = str(REPO)
    return env


def cli(args: Iterable[str], env: dict[str, str], *, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bulk", *args], env=client_env(env), capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


def start_cli(args: Iterable[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "bulk", *args], env=client_env(env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO)


def upload_args(sb: SandboxServer, path: Path, out: Path, *extra: str, via: HostileProxy | None = None) -> list[str]:
    """``bulk upload`` of ``path`` into ``out`` against ``sb`` (through the proxy ``via``, if given)."""
    base_url = sb.base_url if via is None else via.base_url
    return ["upload", str(path), "--target", sb.target, "--base-url", base_url, "--out", str(out),
            "--rate", "100000", "--quiet", *support(sb.target).EXTRA_ARGS, *extra]


def write_input(path: Path, n: int, seed: int = 7, extra_lines: Iterable[bytes] = ()) -> list[Record]:
    lines = list(generate(n, seed=seed)) + [line if line.endswith(b"\n") else line + b"\n" for line in extra_lines]
    path.write_bytes(b"".join(lines))
    records = []
    for i, line in enumerate(lines, 1):
        with contextlib.suppress(Exception):
            records.append(parse_record(line.rstrip(b"\n"), i))
    return records


def read_id_map(out: Path) -> list[dict[str, str]]:
    with open(out / "id_map.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def read_reasons(out: Path) -> list[dict[str, str]]:
    with open(out / "failed_reasons.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def summary(out: Path) -> dict[str, Any]:
    return json.loads((out / "summary.json").read_text())


def expected_totals(records: Iterable[Record]) -> dict[str, Any]:
    totals = CurrencyTotals()
    for r in records:
        totals.add(r.currency, r.totals())
    return totals.to_json()


def assert_exactly_once(sb: SandboxServer, out: Path, records: list[Record]) -> None:
    """Every record created once at the API; the ID map equals the server; totals by the money rule."""
    invoices = support(sb.target).invoices(sb.state())
    counts = Counter(inv["external_id"] for inv in invoices)
    dupes = {k: v for k, v in counts.items() if v > 1}
    assert not dupes, f"duplicates at the API: {dupes}"
    want = {r.external_id for r in records}
    assert set(counts) == want, f"missing {sorted(want - set(counts))[:5]} extra {sorted(set(counts) - want)[:5]}"
    server_ids = {inv["external_id"]: str(inv["id"]) for inv in invoices}
    rows = read_id_map(out)
    assert Counter(r["external_id"] for r in rows) == Counter(want), "ID map rows differ from the input"
    assert {r["external_id"]: r["invoice_id"] for r in rows} == server_ids, "ID map differs from the server"
    by_id = {r.external_id: r for r in records}
    for inv in invoices:
        if inv.get("gross") is not None:
            assert Decimal(str(inv["gross"])) == by_id[inv["external_id"]].totals().gross, inv
    assert summary(out)["totals"] == expected_totals(records)


def no_duplicates(sb: SandboxServer) -> None:
    counts = Counter(inv["external_id"] for inv in support(sb.target).invoices(sb.state()))
    dupes = {k: v for k, v in counts.items() if v > 1}
    assert not dupes, f"duplicate invoices at the API: {dupes}"


@dataclass
class Kills:
    """What :func:`kill_until_done` did: kills that landed, the kind of request each run was
    killed on (held at the proxy), how many held requests reached the server during the next
    run, and the last run (the one that ended on its own)."""

    delivered: int
    held_kinds: list[str]
    late_into_next_run: int
    done: subprocess.CompletedProcess[str]
    exits: list[int]


def _concurrency(args: list[str]) -> int:
    return int(args[args.index("--concurrency") + 1]) if "--concurrency" in args else 16


def kill_until_done(sb: SandboxServer, proxy: HostileProxy, args_for: Callable[[random.Random], list[str]], *,
                    kills: int, seed: int, records: int, span: int = 12, late_into_next_run: float = 0.0,
                    late_window: int = 3, timeout: float = 120,
                    after_each: Callable[[SandboxServer], None] | None = no_duplicates) -> Kills:
    """Start the same command again and again, SIGKILLing it ``kills`` times on progress, then
    run it until it ends on its own (exit 3, stopped resumably, is run again, at most 3 times).

    Each killed run is pointed at ``proxy``, which holds the run's k-th request (k seeded, from
    1 to ``span``); the run is killed once that request is held, so the kill always lands
    mid-run whatever the machine's speed: the run cannot end while it waits for that answer.
    k is at most what the job still has to send, so the run cannot end before reaching it:
    the auth check, plus one create per record not yet at the server (``records`` is how many
    the input holds), or per ``--concurrency`` records where the target batches its creates
    (``BATCHED`` in tests/support/<target>.py). The held request is then delivered late: after
    the kill (the proxy drains, so everything the killed run sent has landed before the next
    run starts) or, with probability ``late_into_next_run``, when one of the next run's first
    ``late_window`` requests arrives (a request of a dead run landing while its successor
    works); a proxy made with ``settle=S`` (anny's time-based contract) ignores that k and
    releases it at a seeded moment in [0, S) after the next run's first answer instead
    (tests/hostile_proxy.py). ``after_each`` checks the server after every kill (by default: no duplicate
    invoice, not even transiently).
    """
    rng = random.Random(seed)
    delivered, kinds, late, exits = 0, [], 0, []
    pending = False  # a held request of the last killed run is still on its way
    for _ in range(kills):
        args = args_for(rng)
        per_request = _concurrency(args) if getattr(support(sb.target), "BATCHED", False) else 1
        remaining = max(0, records - created_count(sb) - (per_request if pending else 0))
        k = rng.randint(1, max(1, min(span, 1 + -(-remaining // per_request))))
        hold = proxy.hold_after(k)
        proc = start_cli(args, sb.env)
        try:
            # B023: the lambda runs inside this iteration only (wait_until calls it before returning)
            wait_until(lambda: hold.reached.is_set() or proc.poll() is not None,  # noqa: B023
                       timeout=90, interval=0.005,
                       what=f"request {hold.number} at the proxy")
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                delivered += 1
                kinds.append(hold.kind or "?")
            _, err = proc.communicate(timeout=30)
        finally:
            stop(proc)
        exits.append(proc.returncode)
        if proc.returncode not in (-signal.SIGKILL, 0, 1, 3):
            raise AssertionError(f"run exited {proc.returncode}: {err}")
        if hold.reached.is_set() and late_into_next_run and rng.random() < late_into_next_run:
            proxy.release_after(hold, rng.randint(1, late_window))
            late += 1
            pending = True
        else:
            proxy.release_all()  # this hold, and one of an earlier run still waiting for its moment
            proxy.drain()
            pending = False
        if after_each is not None and not pending:
            after_each(sb)
    for _ in range(4):
        proc = start_cli(args_for(rng), sb.env)
        try:
            out, err = proc.communicate(timeout=timeout)
        finally:
            stop(proc)
        exits.append(proc.returncode)
        if proc.returncode != 3:
            break
    proxy.release_all()
    proxy.drain()
    return Kills(delivered, kinds, late, subprocess.CompletedProcess(proc.args, proc.returncode, out, err), exits)


def run_until(sb: SandboxServer, args: list[str], *, created: int,
              then: Callable[[subprocess.Popen[str]], object]) -> tuple[int, str]:
    """Start the CLI; once the server holds ``created`` more invoices, call ``then(proc)`` (send a
    signal, kill a child, break the server...) and wait for the run to exit: (exit code, stderr)."""
    proc = start_cli(args, sb.env)
    try:
        goal = created_count(sb) + created
        wait_until(lambda: proc.poll() is not None or created_count(sb) >= goal, timeout=30, what="invoices")
        then(proc)
        _, stderr = proc.communicate(timeout=30)
    finally:
        stop(proc)
    return proc.returncode, stderr


@dataclass
class Killed:
    """What :func:`kill_when` did: ``landed`` when the run was SIGKILLed mid-run (else it had
    ended on its own first), its exit code and stderr."""

    landed: bool
    returncode: int
    stderr: str


def kill_when(sb: SandboxServer, args: list[str], ready: Callable[[], bool], *, what: str, timeout: float = 60,
              must_land: bool = True) -> Killed:
    """Start the CLI with ``args`` and SIGKILL it as soon as ``ready()`` holds: a moment made by
    progress (a request held or gated at the proxy, rows or requests counted), never by wall
    clock. Fails the test when ``ready()`` does not hold within ``timeout`` seconds and, with
    ``must_land``, when the run ended on its own before it (the kill then proves nothing).
    The run is reaped either way; what the killed run sent may still be on its way (drain the
    proxy, release its holds or drop its gates after this)."""
    proc = start_cli(args, sb.env)
    try:
        wait_until(lambda: proc.poll() is not None or ready(), timeout=timeout, interval=0.005, what=what)
        landed = proc.poll() is None
        if landed:
            proc.send_signal(signal.SIGKILL)
        _, stderr = proc.communicate(timeout=30)
    finally:
        stop(proc)
    if must_land:
        assert landed, f"the run ended (exit {proc.returncode}) before {what}: {stderr}"
    return Killed(landed, proc.returncode, stderr)


def resume_to_the_end(sb: SandboxServer, args: list[str], out: Path, records: list[Record]) -> None:
    """The same command again finishes (exit 0) with every record created exactly once."""
    done = cli(args, sb.env)
    assert done.returncode == 0, done.stderr
    assert_exactly_once(sb, out, records)


# --- reliability helpers (issue 6) -----------------------------------------------------------------------------


class RestartableSandbox(SandboxServer):
    """A SandboxServer whose listening socket can be restarted on the same port mid-run.

    A restart aborts every open connection (in-flight requests see a reset; their handlers
    still run to completion, like a server that committed before it went away), closes the
    listener, so new connections are refused for ``down`` seconds, then listens again on the
    same port. The dialect object (data, counters, idempotency keys) survives: it is a restart
    with durable storage, not a new server. Its site is bulk's ``TCPSite``, which stops
    without dropping a connection asyncio has just accepted (see bulk.sandbox._site).

    ``restart_at(n, down=...)`` arms one restart at the server's ``n``-th API request (control
    requests not counted): it begins inside the server while that request arrives, so a client
    can never finish before it, however fast or slow the machine. ``restarted`` is set once the
    server listens again. ``burst_500_at(n, answers)`` arms, the same way, a burst of the
    sandbox's own 500 fault (``fail_rate`` 1) that ends once ``answers`` 500s have been sent.
    """

    def __init__(self, target: str, **settings: Any) -> None:
        super().__init__(target, **settings)
        self.restarted = threading.Event()
        self.burst_over = threading.Event()
        self._armed: tuple[int, float] | None = None
        self._burst: tuple[int, int] | None = None
        self._api_requests = self._answered_500 = 0

    def restart_at(self, requests: int, *, down: float) -> None:
        assert requests > 0 and not self.restarted.is_set()
        self._armed = (requests, down)

    def burst_500_at(self, requests: int, *, answers: int) -> None:
        assert requests > 0 and answers > 0 and not self.burst_over.is_set()
        self._burst = (requests, answers)

    def _main(self) -> None:
        from aiohttp import web

        from bulk.sandbox import build_app
        from bulk.sandbox.control import CONTROLS

        @web.middleware
        async def count(request: web.Request, handler: Any) -> web.StreamResponse:
            if "/_sandbox/" in request.path:
                return await handler(request)
            self._api_requests += 1
            if self._armed is not None and self._api_requests == self._armed[0]:
                task = asyncio.ensure_future(self._bounce(self._armed[1]))
                task.add_done_callback(lambda t: t.cancelled() or t.exception() or self.restarted.set())
                self._tasks.add(task)
            burst = self._burst
            if burst is not None and self._api_requests == burst[0]:
                request.app[CONTROLS].update_faults({"fail_rate": 1.0})
            try:
                response = await handler(request)
                status = response.status
            except web.HTTPException as exc:
                response, status = exc, exc.status
            if burst is not None and status == 500 and not self.burst_over.is_set():
                self._answered_500 += 1
                if self._answered_500 >= burst[1]:
                    request.app[CONTROLS].update_faults({"fail_rate": 0.0})
                    self.burst_over.set()
            if isinstance(response, web.HTTPException):
                raise response
            return response

        async def run() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self._tasks: set[asyncio.Future[None]] = set()
            app = build_app(self.target, self.config)
            app.middlewares.insert(0, count)
            self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.25)
            await self._runner.setup()
            self._site = TCPSite(self._runner, "127.0.0.1", 0, backlog=1024)
            await self._site.start()
            self.port = self._runner.addresses[0][1]
            self.base_url = f"http://127.0.0.1:{self.port}"
            self._ready.set()
            try:
                await self._stop.wait()
            finally:
                for task in self._tasks:
                    task.cancel()
                await self._runner.cleanup()
                for _ in range(3):  # closed connections release their sockets in the next iterations
                    await asyncio.sleep(0)

        try:
            asyncio.run(run())
        except BaseException as exc:  # surfaced by __enter__
            self._error = exc
            self._ready.set()

    async def _bounce(self, down: float) -> None:
        await self._site.stop()  # what it had accepted is the server's: a connection to abort
        await asyncio.sleep(0)  # (its protocol connects, joining server.connections, now)
        server = self._runner.server
        for conn in list(server.connections if server is not None else ()):
            if conn.transport is not None:
                conn.transport.abort()
        await asyncio.sleep(down)
        self._site = TCPSite(self._runner, "127.0.0.1", self.port, backlog=1024)
        await self._site.start()

    def restart(self, *, down: float) -> None:
        """Restart now, from the test's thread (see the class docstring)."""
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(self._bounce(down), self._loop).result(timeout=down + 15)
        self.restarted.set()


def free_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Any, *, timeout: float, interval: float = 0.05, what: str = "condition") -> None:
    """Poll ``predicate()`` until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def created_count(sb: SandboxServer) -> int:
    return len(support(sb.target).invoices(sb.state()))


def in_flight(sb: SandboxServer) -> int:
    """API requests the sandbox holds right now (received, handler not yet done), whether or
    not their sender is still alive: 0 means nothing more can commit at the server."""
    return int(sb.state()["requests"]["in_flight"])


def assert_outputs_whole(out: Path) -> None:
    """Nothing half-written: every output file of ``out`` parses completely.

    CSV files end with a newline and every row has the header's width; failed.ndjson ends with
    a newline (each line is a verbatim input line); summary.json is valid JSON; no temp file
    of an atomic write is left behind.
    """
    for name in ("id_map.csv", "failed_reasons.csv"):
        path = out / name
        if not path.exists():
            continue
        data = path.read_bytes()
        assert not data or data.endswith(b"\n"), f"{name} ends with a torn row: {data[-80:]!r}"
        rows = list(csv.reader(data.decode("utf-8").splitlines()))
        assert rows, f"{name} lacks its header"
        width = len(rows[0])
        torn = [r for r in rows if len(r) != width]
        assert not torn, f"{name} has incomplete rows: {torn[:3]}"
    failed = out / "failed.ndjson"
    if failed.exists():
        data = failed.read_bytes()
        assert not data or data.endswith(b"\n"), f"failed.ndjson ends with a torn line: {data[-80:]!r}"
    if (out / "summary.json").exists():
        json.loads((out / "summary.json").read_text())
    leftovers = [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    assert not leftovers, f"temp files left behind: {leftovers}"


def assert_counts(out: Path, records: list[Record], *, rejected: int = 0, failed: int = 0) -> None:
    """The summary's counts and totals equal the input's: every valid record created, nothing lost."""
    s = summary(out)
    r = s["records"]
    assert s["complete"] is True, s
    assert r["created"] == len(records), r
    assert (r["rejected"], r["failed"], r["uncertain"]) == (rejected, failed, 0), r
    assert r["read"] == len(records) + rejected + failed, r
    assert s["totals"] == expected_totals(records), s["totals"]


def cli_with(prelude: str, args: Iterable[str], env: dict[str, str], *, epilogue: str = "",
             timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Like :func:`cli`, but run ``prelude`` in the child before bulk starts (e.g. a resource
    limit) and ``epilogue`` when it ends (e.g. report the peak memory on stderr)."""
    boot = "\n".join([
        "import runpy, sys",
        prelude,
        "sys.argv = ['bulk', *sys.argv[1:]]",
        "try:",
        "    runpy.run_module('bulk', run_name='__main__', alter_sys=True)",
        "finally:",
        "    pass",
        *(f"    {line}" for line in epilogue.splitlines()),
    ])
    return subprocess.run([sys.executable, "-B", "-c", boot, *args], env=client_env(env), capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


class ScriptedServer:
    """A tiny aiohttp server in a thread that answers every request with ``respond(request)``
    (a coroutine returning a ``web.Response``) and records each request's method, path and
    headers in ``seen``. ``ssl`` serves https with that context. Not a sandbox: for hostile or
    misconfigured servers (echoing credentials, redirecting, self-signed certificates)."""

    def __init__(self, respond: Any, *, ssl: Any = None) -> None:
        self.respond = respond
        self.ssl = ssl
        self.seen: list[dict[str, Any]] = []
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.port = 0
        self._error: BaseException | None = None

    @property
    def base_url(self) -> str:
        return f"{'https' if self.ssl else 'http'}://127.0.0.1:{self.port}"

    def _main(self) -> None:
        from aiohttp import web

        async def handle(request: web.Request) -> web.StreamResponse:
            self.seen.append({"method": request.method, "path": request.path_qs, "headers": dict(request.headers)})
            await request.read()
            return await self.respond(request)  # type: ignore[no-any-return]

        async def run() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", handle)
            runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.25)
            await runner.setup()
            site = TCPSite(runner, "127.0.0.1", 0, ssl_context=self.ssl)
            await site.start()
            self.port = runner.addresses[0][1]
            self._ready.set()
            try:
                await self._stop.wait()
            finally:
                await runner.cleanup()
                for _ in range(3):  # closed connections release their sockets in the next iterations
                    await asyncio.sleep(0)

        try:
            asyncio.run(run())
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        if not self._ready.wait(15) or self._error is not None:
            raise RuntimeError(f"server did not start: {self._error!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


def signalled(proc: subprocess.Popen[AnyStr], signum: int, what: str) -> AnyStr:
    """Send ``signum`` to a started CLI and wait for it to end (60 s: a guard against a hang,
    not a timing); its stderr. A process still running then is killed and the test fails,
    saying ``what`` it should have done."""
    proc.send_signal(signum)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail(f"bulk upload did not end after signal {signum}: {what}")
    return err


def stop(proc: subprocess.Popen[str]) -> None:
    """Make sure a started CLI is gone and reaped, its pipes closed (a test's ``finally``)."""
    if proc.poll() is None:
        proc.kill()
    try:
        proc.communicate(timeout=30)
    except ValueError:  # already communicated: the pipes are closed
        proc.wait(timeout=30)
