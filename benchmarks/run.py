"""Benchmark harness: ``bulk`` against three baselines, on the same local servers, in one run.

    python -m benchmarks.run                       # the three scenarios, 3 rounds (~12 min)
    python -m benchmarks.run --scenarios memory,resume   # the memory and resume goals (~15 min)
    python -m benchmarks.run --tiny                # seconds: checks the harness works

Every client runs in its own subprocess; the runs of a scenario alternate (A B C D A B C D
...) and the table shows medians. Per run: wall time (process start to exit), CPU (user +
system of the child, from ``wait4``), peak RSS (the child's ``ru_maxrss``), and the server's
CPU over the same interval (to show it is not the bottleneck). See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from benchmarks import servers
from benchmarks._callgrind import precompile

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-3f9a6c2d8e1b4f7a9c0d5e2b8a1f4c7d"  # realistic length: a 1-letter token would be "found" in headers
SCENARIOS = ("none", "latency", "rate", "limit")


# --- clients ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Client:
    name: str
    label: str
    module: str | None  # a benchmarks.clients module; None for bulk itself
    extra: tuple[str, ...] = ()
    needs: str | None = None  # an importable module the client needs


CLIENTS = {
    "bulk": Client("bulk", "bulk (CLI)", None),
    # the multi-process decision (issue 11): one job as 1 or 2 shard workers, side by side
    "bulk-p1": Client("bulk-p1", "bulk --processes 1", None, ("--processes", "1")),
    "bulk-p2": Client("bulk-p2", "bulk --processes 2", None, ("--processes", "2")),
    "aiohttp": Client("aiohttp", "bare aiohttp loop", "aiohttp_pool"),
    "aiohttp-uvloop": Client("aiohttp-uvloop", "bare aiohttp loop + uvloop", "aiohttp_pool", ("--uvloop",), "uvloop"),
    "httpx": Client("httpx", "httpx.AsyncClient + gather", "httpx_gather", needs="httpx"),
    "requests": Client("requests", "requests.Session loop", "seq_requests", needs="requests"),
}
# "× bare loop" is against the bare loop on uvloop (aiohttp + orjson + uvloop, issue 11's
# reference: bulk itself runs on uvloop); the stock-asyncio row when uvloop is not installed.
REFERENCE = "aiohttp-uvloop"
LIMIT_BURST = 5  # nginx limit_req burst=5 nodelay: up to 6 requests at once from idle
CAPACITY_BURST = 1_000_000  # --limit-capacity: a bucket no run here overruns


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


@dataclass
class Measurement:
    client: str
    records: int
    wall: float
    cpu: float
    rss_mb: float
    created: int
    requests: int
    throttled: int  # as the client saw them
    server_cpu: float | None
    exit_code: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.created / self.wall if self.wall else 0.0


def _wait(proc: subprocess.Popen[bytes], timeout: float) -> tuple[int, Any]:
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, usage
        if time.monotonic() > deadline:
            proc.kill()
        time.sleep(0.005)


def host_steal() -> tuple[int, int]:
    """(steal, all) CPU ticks of the whole machine so far (``/proc/stat``; (0, 0) where there is
    none): steal is the time the hypervisor gave this VM's CPUs to its other guests."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    return (ticks[7] if len(ticks) > 7 else 0), sum(ticks[:8])


def run_client(client: Client, input_path: Path, server: servers.Server, *, concurrency: int, work: Path,
               bulk_args: Sequence[str] = (), timeout: float = 1800, cpus: set[int] | None = None) -> Measurement:
    out = work / f"out-{client.name}-{time.monotonic_ns()}"
    env = {**os.environ, "AGILED_API_TOKEN": TOKEN, "PYTHONPATH": str(ROOT)}
    if client.module is None:
        cmd = [sys.executable, "-m", "bulk", "upload", str(input_path), "--base-url", server.base_url, "--quiet",
               "--out", str(out), "--concurrency", str(concurrency), *bulk_args, *client.extra]
    else:
        cmd = [sys.executable, "-m", f"benchmarks.clients.{client.module}", str(input_path), "--base-url",
               server.base_url, "--out", str(out), "--token", TOKEN, "--concurrency", str(concurrency), *client.extra]
    usage_file = work / f"usage-{client.name}-{time.monotonic_ns()}.json"
    pinned = ["--cpus", ",".join(map(str, sorted(cpus)))] if cpus else []
    cpu0, steal0 = server.cpu_seconds(), host_steal()
    proc = subprocess.run([sys.executable, "-m", "benchmarks.spawn", str(usage_file), *pinned, "--", *cmd],
                          capture_output=True, env=env, cwd=ROOT, timeout=timeout)
    cpu1, steal1 = server.cpu_seconds(), host_steal()
    stdout, stderr = proc.stdout, proc.stderr
    try:
        usage = orjson.loads(usage_file.read_bytes())
    except OSError:
        raise RuntimeError(f"{client.name}: the launcher failed: {stderr.decode()[-800:]}") from None
    usage_file.unlink()
    code, wall = usage["exit_code"], usage["wall"]
    if client.module is None:
        try:
            summary = orjson.loads((out / "summary.json").read_bytes())
        except OSError:
            raise RuntimeError(f"bulk wrote no summary (exit {code}): {stderr.decode()[-800:]}") from None
        created, requests, throttled = summary["records"]["created"], summary["requests"], summary["throttled"]
        work_seconds = summary["this_run"]["elapsed_seconds"]
        processes = summary.get("processes", 1)
    else:
        try:
            result = orjson.loads(stdout.strip().splitlines()[-1])
        except (IndexError, orjson.JSONDecodeError):
            raise RuntimeError(f"{client.name} failed (exit {code}): {stderr.decode()[-800:]}") from None
        created, requests, throttled = result["created"], result["requests"], result["throttled"]
        work_seconds = result["work_seconds"]
        processes = 1
    shutil.rmtree(out, ignore_errors=True)
    return Measurement(
        client=client.name, records=sum(1 for _ in open(input_path, "rb")), wall=wall,
        cpu=usage["utime"] + usage["stime"], rss_mb=usage.get("tree_rss_kb", usage["maxrss_kb"]) / 1024,
        created=created, requests=requests, throttled=throttled,
        server_cpu=None if cpu0 is None or cpu1 is None else cpu1 - cpu0, exit_code=code,
        extra={"work_seconds": work_seconds, "processes": processes,
               "steal": (steal1[0] - steal0[0]) / (steal1[1] - steal0[1]) if steal1[1] > steal0[1] else 0.0,
               "pss_mb": usage.get("tree_pss_kb", 0) / 1024, "cpus": usage.get("cpus", []),
               "rss_parts_mb": [kb / 1024 for kb in usage.get("tree_rss_parts_kb", ())]},
    )


# --- inputs -------------------------------------------------------------------------------------
def make_input(work: Path, n: int) -> Path:
    """``bulk generate n`` (seed 0), cached under benchmarks/data when it is the default work dir."""
    path = work / f"invoices-{n}.ndjson"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        subprocess.run([sys.executable, "-m", "bulk", "generate", str(n), "-o", str(tmp)], check=True, cwd=ROOT)
        tmp.rename(path)
    return path


# --- scenarios ----------------------------------------------------------------------------------
@dataclass
class Plan:
    scenario: str
    title: str
    server: Callable[[], servers.Server]
    sizes: dict[str, int]  # client -> records
    concurrency: int
    bulk_args: tuple[str, ...]
    rate: float | None = None
    counted_by_nginx: bool = False  # the "limit" scenario: 429s and rate from nginx's access log


def plans(args: argparse.Namespace) -> list[Plan]:
    n = args.records
    use_nginx = not args.no_nginx
    out = []
    for name in args.scenarios:
        if name == "none":
            make = (lambda: servers.start_nginx(0)) if use_nginx and servers.nginx_available(False) else \
                (lambda: servers.start_canned(0))
            out.append(Plan("none", "no latency, no limit", make,
                            {"bulk": n, "aiohttp": n, "aiohttp-uvloop": n, "httpx": max(1, n // 10),
                             "requests": max(1, n // 5)}, args.concurrency, ("--rate", "1e9")))
        elif name == "latency":
            ms = args.latency_ms
            # ms=ms: each lambda keeps this scenario's value (B023)
            make = (lambda ms=ms: servers.start_nginx(ms)) if use_nginx and servers.nginx_available(True) else \
                (lambda ms=ms: servers.start_canned(ms))
            m = args.latency_records
            out.append(Plan("latency", f"{ms:g} ms latency, concurrency {args.latency_concurrency}", make,
                            {"bulk": m, "aiohttp": m, "aiohttp-uvloop": m, "httpx": max(1, m // 10),
                             "requests": max(1, min(m, int(10_000 / ms)) if ms else m // 5)},
                            args.latency_concurrency, ("--rate", "1e9")))
        elif name == "rate":
            r = args.rate
            m = args.rate_records or int(r * 15)
            out.append(Plan("rate", f"server limit R = {r:g} requests/s per kind (429 + Retry-After beyond)",
                            lambda r=r: servers.start_sandbox(r, TOKEN),
                            {c: m for c in CLIENTS}, args.concurrency,
                            ("--limit", f"write={r:g}", "--limit", f"read={r:g}"), rate=r))
        elif name == "limit":
            nginx = use_nginx and servers.nginx_available(True)
            for r in args.limit_rates:
                m = max(1, int(r * args.limit_seconds))
                make = (lambda r=r: servers.start_nginx_limited(r, LIMIT_BURST)) if nginx else \
                    (lambda r=r: servers.start_sandbox(r, TOKEN, burst=LIMIT_BURST + 1))
                out.append(Plan("limit", f"server limit R = {r:g} requests/s, burst {LIMIT_BURST} "
                                "(nginx limit_req, 429 + Retry-After: 1)", make,
                                {c: m for c in CLIENTS}, args.concurrency, ("--rate", f"{r:g}"), rate=r,
                                counted_by_nginx=nginx))
                if args.limit_capacity:
                    # What the client can send on this machine now: the same server with a bucket
                    # nothing overruns, bulk unpaced. On a busy machine this, not the pacing, can
                    # be what keeps the rate under R: compare the two rows.
                    make = (lambda r=r: servers.start_nginx_limited(r, CAPACITY_BURST)) if nginx else \
                        (lambda r=r: servers.start_sandbox(r, TOKEN, burst=CAPACITY_BURST))
                    out.append(Plan("limit", f"capacity at R = {r:g}: the same server with burst {CAPACITY_BURST:,} "
                                    "(no 429), bulk --rate 1e9", make,
                                    {c: m for c in CLIENTS}, args.concurrency, ("--rate", "1e9"), rate=r,
                                    counted_by_nginx=nginx))
    return out


@dataclass(frozen=True)
class Pin:
    """``--pin``: the server's processes on ``server``, every client (and its children) on ``clients``."""

    server: set[int]
    clients: set[int]

    @classmethod
    def split(cls, cpus: set[int]) -> Pin:
        """The last of ``cpus`` for the server, the rest for the clients (two at least)."""
        if len(cpus) < 2:
            raise ValueError(f"--pin needs at least 2 CPUs to give the server one of its own; this process may "
                             f"use {len(cpus)}")
        ordered = sorted(cpus)
        return cls({ordered[-1]}, set(ordered[:-1]))

    def describe(self) -> str:
        return (f"pinned: the server on CPU {', '.join(map(str, sorted(self.server)))}, each client on CPU "
                f"{', '.join(map(str, sorted(self.clients)))}")


def run_plan(plan: Plan, clients: list[Client], rounds: int, work: Path, log: Callable[[str], None],
             pin: Pin | None = None) -> dict[str, Any]:
    inputs = {c.name: make_input(work, plan.sizes.get(c.name) or plan.sizes["bulk"]) for c in clients}
    results: dict[str, list[Measurement]] = {c.name: [] for c in clients}
    server = plan.server()
    try:
        if pin is not None:
            server.pin(pin.server)
        log(f"[{plan.scenario}] server: {server.label} at {server.base_url}")
        for r in range(rounds):
            for c in clients:  # alternate: A B C D, A B C D, ...
                if plan.counted_by_nginx:
                    time.sleep(1.0)  # the bucket drains: every client starts from idle
                    offset = server.log_offset()
                elif plan.rate is not None:
                    servers.sandbox_call(server, "POST", "/_sandbox/reset")  # fresh data, full buckets
                m = run_client(c, inputs[c.name], server, concurrency=1 if c.name == "requests" else plan.concurrency,
                               work=work, bulk_args=plan.bulk_args, cpus=pin.clients if pin else None)
                if plan.counted_by_nginx:
                    total, n429, span, paced = server.answers(offset)
                    accepted = total - n429
                    m.extra.update({
                        "server_requests": total, "server_429": n429, "accepted": accepted,
                        # accepted requests per second at the server, first to last accepted one
                        "writes_per_s": (accepted - 1) / span if span > 0 else 0.0,
                        # ... and the pace: without the last n429 accepted (a late 429's resend)
                        "paced_per_s": (accepted - 1 - n429) / paced if paced > 0 else 0.0,
                    })
                elif plan.rate is not None:
                    state = orjson.loads(servers.sandbox_call(server, "GET", "/_sandbox/state"))
                    by = state["requests"]["by_status"]
                    total = state["requests"]["total"]
                    writes = int(by.get("201", 0))
                    accepted = sum(int(n) for status, n in by.items() if status != "429")
                    m.extra.update({
                        "server_requests": total, "server_429": int(by.get("429", 0)),
                        "writes_per_s": (accepted if plan.scenario == "limit" else writes) / m.extra["work_seconds"]
                        if m.extra["work_seconds"] else 0.0,
                        "invoices_per_s_server": _server_invoice_rate(state),
                    })
                results[c.name].append(m)
                log(f"[{plan.scenario}] round {r + 1} {c.name:15s} {m.created:7d} inv {m.wall:7.2f} s "
                    f"{m.rate:8.1f} inv/s cpu {m.cpu:6.2f} s rss {m.rss_mb:6.1f} MB steal {m.extra['steal']:5.1%}"
                    + (f" server cpu {m.server_cpu:5.2f} s" if m.server_cpu is not None else "")
                    + (f" 429 {m.extra['server_429']}/{m.extra['server_requests']}" if plan.rate else ""))
    finally:
        server.stop()
    return {"plan": plan, "server": server.label, "results": results}


def _server_invoice_rate(state: dict[str, Any]) -> float:
    stamps = sorted(dt.datetime.strptime(i["created_at"], "%Y-%m-%dT%H:%M:%S.%fZ") for i in state.get("invoices", []))
    if len(stamps) < 2:
        return 0.0
    span = (stamps[-1] - stamps[0]).total_seconds()
    return (len(stamps) - 1) / span if span > 0 else 0.0


# --- table --------------------------------------------------------------------------------------
def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def table(outcome: dict[str, Any], clients: list[Client]) -> list[str]:
    plan: Plan = outcome["plan"]
    res: dict[str, list[Measurement]] = outcome["results"]
    ref_name = REFERENCE if REFERENCE in res else "aiohttp"
    ref = _median([m.rate for m in res[ref_name]]) if ref_name in res else None
    seq = _median([m.rate for m in res.get("requests", [])]) if "requests" in res else None
    head = "| client | records | invoices/s | CPU s / 1k inv | peak RSS MB | × bare loop | server CPU % |"
    sep = "|---|---:|---:|---:|---:|---:|---:|"
    if plan.rate is not None:
        what = "accepted requests/s" if plan.scenario == "limit" else "writes/s"
        head = (f"| client | records | invoices/s | {what} (R = {plan.rate:g}) | × R | 429 answers | CPU s / 1k inv | "
                "peak RSS MB |")
        sep = "|---|---:|---:|---:|---:|---:|---:|---:|"
        if plan.scenario == "limit":  # and the pace without a late 429's resend (Server.answers)
            head, sep = head + " × R, pace |", sep + "---:|"
    lines = [f"**{plan.title}** — server: {outcome['server']}", "", head, sep]
    for c in clients:
        ms = res.get(c.name, [])
        if not ms:
            continue
        rate = _median([m.rate for m in ms])
        cpu_k = _median([m.cpu / m.created * 1000 for m in ms if m.created])
        rss = _median([m.rss_mb for m in ms])
        if plan.rate is not None:
            w = _median([m.extra["writes_per_s"] for m in ms])
            n429 = _median([m.extra["server_429"] for m in ms])
            total = _median([m.extra["server_requests"] for m in ms])
            row = (f"| {c.label} | {ms[0].records:,} | {rate:,.0f} | {w:,.1f} | {w / plan.rate:.3f} | "
                   f"{n429:,.0f} of {total:,.0f} ({n429 / total:.1%}) | {cpu_k:.2f} | {rss:.0f} |")
            if plan.scenario == "limit":
                paced = [m.extra["paced_per_s"] for m in ms if "paced_per_s" in m.extra]
                row += f" {_median(paced) / plan.rate:.3f} |" if paced else " – |"
            lines.append(row)
        else:
            scpu = [m.server_cpu / m.wall for m in ms if m.server_cpu is not None]
            ratio = f"{rate / ref:.2f}" if ref else "–"
            server_cpu = f"{_median(scpu):.0%}" if scpu else "–"
            lines.append(f"| {c.label} | {ms[0].records:,} | {rate:,.0f} | {cpu_k:.2f} | {rss:.0f} | {ratio} | "
                         f"{server_cpu} |")
    steals = [m.extra["steal"] for ms in res.values() for m in ms if "steal" in m.extra]
    if steals:
        lines += ["", f"Host CPU steal during the runs (the hypervisor's other guests): median "
                      f"{_median(steals):.1%}, max {max(steals):.1%}."]
    if plan.rate is None and ref_name in res:
        for c in clients:
            if c.name != ref_name and res.get(c.name):  # round by round: the spread the medians hide
                per = ", ".join(f"{m.rate / r.rate:.2f}" for m, r in zip(res[c.name], res[ref_name], strict=False)
                                if r.rate)
                lines.append(f"{c.label} x bare loop, round by round: {per}.")
    if plan.scenario == "latency" and seq:
        bulk_rate = _median([m.rate for m in res.get("bulk", [])])
        lines += ["", f"bulk ÷ sequential requests loop: {bulk_rate / seq:,.0f}×"]
    return lines


def machine() -> str:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{os.cpu_count()} CPUs ({model}), {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}")


# --- memory and resume ----------------------------------------------------------------------------
def memory_goal(args: argparse.Namespace, work: Path, log: Callable[[str], None]) -> list[str]:
    """Peak RSS of bulk (all its processes, summed) at 10,000 and at --memory-records records
    (no-latency server), with the default ``--processes auto`` and with one process."""
    small, big = 10_000, args.memory_records
    server = servers.start_nginx(0) if servers.nginx_available(False) and not args.no_nginx else servers.start_canned(0)
    modes = (("auto", ()), ("1", ("--processes", "1")))
    rows: list[tuple[str, Measurement]] = []
    try:
        for mode, extra in modes:
            for n in (small, big):
                m = run_client(CLIENTS["bulk"], make_input(work, n), server, concurrency=args.concurrency, work=work,
                               bulk_args=("--rate", "1e9", *extra))
                log(f"[memory] --processes {mode}, {n:,} records: peak RSS {m.rss_mb:.1f} MB ({_parts(m)}), "
                    f"PSS {m.extra['pss_mb']:.1f} MB, {m.rate:,.0f} inv/s, {m.wall:.1f} s")
                rows.append((mode, m))
    finally:
        server.stop()
    # The parts say which process holds what (bulk --processes N: the parent, which supervises
    # and merges, then its N shard workers); PSS counts a page the processes share once.
    lines = ["| --processes | records | processes used | peak RSS MB (summed) | at that peak, MB each | "
             "peak PSS MB (summed) | invoices/s | wall s |",
             "|---|---:|---:|---:|---|---:|---:|---:|"]
    lines += [f"| {mode} | {m.records:,} | {m.extra.get('processes', '?')} | {m.rss_mb:.1f} | {_parts(m)} | "
              f"{m.extra['pss_mb']:.1f} | {m.rate:,.0f} | {m.wall:.1f} |" for mode, m in rows]
    lines.append("")
    for i, (mode, _) in enumerate(modes):
        lo, hi = rows[2 * i][1], rows[2 * i + 1][1]
        lines.append(f"--processes {mode}: peak RSS at {big:,} ÷ at {small:,}: {hi.rss_mb / lo.rss_mb:.2f}  ")
    return lines


def _parts(m: Measurement) -> str:
    """The processes' RSS at the summed peak, the parent first: "44.9 + 57.3 + 57.1"."""
    return " + ".join(f"{mb:.1f}" for mb in m.extra.get("rss_parts_mb", ())) or "?"


def resume_goal(args: argparse.Namespace, work: Path, scratch: Path, log: Callable[[str], None]) -> list[str]:
    """Kill -9 a run once 99% of its records are checkpointed, then time the re-run's first requests.

    The first run goes against nginx; the re-run against a fresh nginx whose access log stamps
    every request, so the first request's arrival is read from the server's side.
    """
    n = args.memory_records
    path = make_input(work, n)
    out = scratch / "resume-run"
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "AGILED_API_TOKEN": TOKEN, "PYTHONPATH": str(ROOT)}
    server = servers.start_nginx(0) if servers.nginx_available(False) and not args.no_nginx else servers.start_canned(0)
    target = int(n * 0.99)
    try:
        cmd = [sys.executable, "-m", "bulk", "upload", str(path), "--base-url", server.base_url, "--quiet",
               "--out", str(out), "--rate", "1e9", "--concurrency", str(args.concurrency),
               # the goal is one process's (auto takes 2 for 1,000,000 records, whose parent
               # writes summary.json only when it merges)
               "--processes", "1"]
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        done = 0
        while proc.poll() is None:
            with contextlib.suppress(OSError, orjson.JSONDecodeError, KeyError):
                done = orjson.loads((out / "summary.json").read_bytes())["records"]["read"]
            if done >= target:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.05)
        proc.wait()
        log(f"[resume] killed (SIGKILL) with {done:,} of {n:,} records checkpointed")
        if done < target or done >= n:
            raise RuntimeError(f"could not stop the run between 99% and 100% (checkpointed {done:,})")
    finally:
        server.stop()
    stamped = servers.start_nginx(0, access_log=True)
    try:
        t0 = time.time()
        at = cmd.index("--base-url")
        proc = subprocess.Popen([*cmd[:at + 1], stamped.base_url, *cmd[at + 2:]],
                                env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        code, usage = _wait(proc, 600)
        t_end = time.time()
        first, first_post = stamped.first_request_times()
    finally:
        stamped.stop()
    summary = orjson.loads((out / "summary.json").read_bytes())
    shutil.rmtree(out, ignore_errors=True)
    log(f"[resume] re-run exit {code}: first request after {first - t0:.3f} s, first invoice POST after "
        f"{first_post - t0:.3f} s, finished after {t_end - t0:.2f} s")
    return [
        f"Input: {n:,} records; the first run was killed with SIGKILL once {done:,} were checkpointed "
        f"({done / n:.2%}).",
        "",
        "| re-run (same command) | seconds after process start |", "|---|---:|",
        f"| first request reaches the server (`GET /me`, auth check) | {first - t0:.3f} |",
        f"| first invoice `POST` reaches the server | {first_post - t0:.3f} |",
        f"| run finished ({summary['this_run']['created']:,} invoices created) | {t_end - t0:.2f} |",
        "",
        f"Totals after the re-run: {summary['records']['created']:,} created, "
        f"{summary['records']['rejected'] + summary['records']['failed']} rejected or failed "
        f"(exit {code}); peak RSS of the re-run's main process {usage.ru_maxrss / 1024:.0f} MB.",
    ]


# --- main ---------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenarios", default="none,latency,rate",
                   help="comma-separated: none, latency, rate, limit, memory, resume (default: the first three)")
    p.add_argument("--clients", default=",".join(c for c in CLIENTS if not c.startswith("bulk-p")),
                   help=f"comma-separated, from {', '.join(CLIENTS)} (default: all but bulk-p1, bulk-p2)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds per scenario; medians are shown")
    p.add_argument("--records", type=int, default=100_000, help="records for bulk and the bare loops, no latency")
    p.add_argument("--concurrency", type=int, default=64, help="in flight per client (no latency, rate)")
    p.add_argument("--latency-ms", type=float, default=50)
    p.add_argument("--latency-concurrency", type=int, default=256)
    p.add_argument("--latency-records", type=int, default=50_000)
    p.add_argument("--rate", type=float, default=1000, help="R: the server's limit per kind, requests/s")
    p.add_argument("--rate-records", type=int, default=0, help="records per client under the limit (default 15 R)")
    p.add_argument("--limit-rates", default="20,200,1000",
                   help="R values of the 'limit' scenario (nginx limit_req, burst 5), comma-separated")
    p.add_argument("--limit-seconds", type=float, default=15, help="records per client in 'limit': R x this")
    p.add_argument("--limit-capacity", action="store_true",
                   help="'limit' also measures each R unthrottled (burst 1,000,000, bulk --rate 1e9): what the "
                        "client can send on this machine now, to tell a busy machine from the pacing")
    p.add_argument("--memory-records", type=int, default=1_000_000)
    p.add_argument("--pin", action="store_true",
                   help="the server on one CPU of its own, every client on the others (sched_setaffinity): the "
                        "client and the server no longer take turns on one core, which on a 2-CPU machine moves "
                        "a no-latency figure by up to 2x between rounds; bulk's --processes auto then sees the "
                        "client's CPUs only")
    p.add_argument("--no-nginx", action="store_true", help="use the Python canned server even if nginx is there")
    p.add_argument("--tiny", action="store_true", help="a few seconds: tiny inputs, 1 round (harness check)")
    p.add_argument("--work", help="directory for inputs and run directories (default benchmarks/data)")
    p.add_argument("--results", help="directory for the results (default benchmarks/results)")
    p.add_argument("--no-precompile", action="store_true",
                   help="do not byte-compile bulk/ and benchmarks/ first; remove their .pyc files instead, so "
                        "that every process compiles from source (PYTHONDONTWRITEBYTECODE=1 and an editable "
                        "install): the A/B of the start-up a user's pip install does not pay")
    args = p.parse_args(argv)
    pin = None
    if args.pin:
        try:
            pin = Pin.split(os.sched_getaffinity(0))
        except ValueError as exc:
            p.error(str(exc))
    args.scenarios = [s for s in args.scenarios.split(",") if s]
    args.limit_rates = [float(r) for r in args.limit_rates.split(",") if r]
    if args.tiny:
        args.rounds, args.records, args.latency_records, args.latency_ms = 1, 100, 100, 5
        args.rate, args.rate_records, args.memory_records = 1000, 50, 2_000
        args.limit_rates, args.limit_seconds = [200.0], 0.25
    unknown = set(args.scenarios) - {*SCENARIOS, "memory", "resume"}
    if unknown:
        p.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    wanted = [c for c in args.clients.split(",") if c]
    if set(wanted) - set(CLIENTS):
        p.error(f"unknown client(s): {', '.join(sorted(set(wanted) - set(CLIENTS)))}")
    clients = []
    for name in wanted:
        c = CLIENTS[name]
        if c.needs and not _importable(c.needs):
            print(f"note: skipping {c.label}: {c.needs} is not installed (pip install -e '.[bench]')", file=sys.stderr)
            continue
        clients.append(c)
    if not args.no_nginx and not servers.nginx_available(False) and set(args.scenarios) - {"rate"}:
        print("note: nginx is not installed, so the no-latency and latency servers are the Python canned server, "
              "which may itself be the bottleneck (Debian: apt-get install nginx libnginx-mod-http-echo)",
              file=sys.stderr)
    elif "latency" in args.scenarios and not args.no_nginx and not servers.nginx_available(True):
        print("note: nginx's echo module is missing, so the latency server is the Python canned server "
              "(Debian: apt-get install libnginx-mod-http-echo)", file=sys.stderr)

    work = Path(args.work) if args.work else ROOT / "benchmarks" / "data"
    work.mkdir(parents=True, exist_ok=True)
    results_dir = Path(args.results) if args.results else ROOT / "benchmarks" / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    started = dt.datetime.now(dt.UTC)
    precompile(not args.no_precompile)  # before any round: every child reads the .pyc files

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    command = "python -m benchmarks.run" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    report = [f"Machine: {machine()}", f"Date: {started:%Y-%m-%d %H:%M} UTC", f"Command: `{command}`",
              *([f"CPUs: {pin.describe()}"] if pin else []), ""]
    raw: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bulk-bench-", dir=work) as tmp:
        scratch = Path(tmp)
        for plan in plans(args):
            outcome = run_plan(plan, clients, args.rounds, work, log, pin)
            report += [*table(outcome, clients), ""]
            raw.append({"scenario": plan.scenario, "server": outcome["server"],
                        "runs": [vars(m) for ms in outcome["results"].values() for m in ms]})
        if "memory" in args.scenarios:
            report += ["**Memory** (bulk, no-latency server)", "", *memory_goal(args, work, log), ""]
        if "resume" in args.scenarios:
            report += ["**Resume** (bulk, 99% done)", "", *resume_goal(args, work, scratch, log), ""]
    text = "\n".join(report)
    print(text)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    (results_dir / f"{stamp}.md").write_text(text + "\n")
    (results_dir / f"{stamp}.json").write_bytes(orjson.dumps({"command": command, "machine": machine(),
                                                             "started": started.isoformat(), "scenarios": raw},
                                                            option=orjson.OPT_INDENT_2))
    log(f"results: {results_dir / (stamp + '.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
