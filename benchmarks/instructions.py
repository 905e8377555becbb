"""Instructions per invoice, bulk vs the bare loop, under ``valgrind --tool=callgrind``.

Wall-clock figures on a shared machine are noise; instruction counts are not: callgrind counts
every instruction a process executes (Python, C extensions, the kernel boundary excluded)
whatever else runs. Each client uploads two inputs of ``small`` and ``large`` invoices to the
canned nginx (no latency); the difference of the two counts divided by the difference of the
sizes is the *marginal* cost of one invoice, start-up (imports, the job's setup) excluded::

    .venv/bin/python -m benchmarks.instructions                 # 500 and 2,500 invoices, ~3 min
    .venv/bin/python -m benchmarks.instructions --small 200 --large 1000 --clients bulk

``--wall N`` adds a short side-by-side wall-clock check (the same two clients, alternating,
``--rounds`` each on N invoices, through :func:`benchmarks.run.run_client`: invoices/s and CPU
per invoice, medians), for the record: on a shared machine only the instruction counts are
reproducible.

The count is of *work*, not time, with one exception: what ``bulk`` does on a clock (a timeline
row every wall-clock second, a checkpoint every ``--checkpoint-every`` seconds, the summary's
percentiles with it) grows with the run's wall time, which callgrind on a loaded machine
stretches: the same code measured 824,079 (500/2,500, a quiet machine) and 1,043,604 (200/1,000,
load average 15) instructions per invoice. Each run's wall time is printed beside its count:
compare figures only from runs of similar wall times (and the same sizes). ``--repeat R`` runs
each size R times and keeps the smallest count (the run the clock stretched least).

``bulk`` runs as ``bulk upload FILE --processes 1 --rate 1e9 --concurrency 64 --checkpoint-every 50``
(see :func:`command`); the bare loop
is ``benchmarks/clients/aiohttp_pool.py --uvloop``. Needs valgrind and nginx.

``--processes 1,2`` measures ``bulk`` once per process count (clients ``bulk-p1``, ``bulk-p2``).
callgrind follows the shard workers (``--trace-children=yes``, one output file per process), so
a count is the sum over every process of the run, and it is split into the parent's share
(start-up, supervision, the merge of the shards' outputs) and the workers': what a second
process costs per invoice, load-independent::

    .venv/bin/python -m benchmarks.instructions --clients bulk --processes 1,2 --small 200 --large 1000

``--keep DIR`` keeps every run's callgrind files there (for ``callgrind_annotate``).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks import servers
from benchmarks._callgrind import precompile
from benchmarks.run import CLIENTS, make_input, run_client

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-token"


def command(client: str, input_path: Path, base_url: str, out: Path, concurrency: int,
            processes: int = 1) -> list[str]:
    if client == "bulk":
        return [sys.executable, "-m", "bulk", "upload", str(input_path), "--base-url", base_url, "--quiet",
                "--out", str(out), "--concurrency", str(concurrency), "--rate", "1e9", "--processes", str(processes),
                # callgrind runs ~50x slower: a checkpoint every 50 s of it is one a second
                # natively, so the count holds the checkpoints a real run of that size makes.
                "--checkpoint-every", "50"]
    return [sys.executable, "-m", "benchmarks.clients.aiohttp_pool", str(input_path), "--base-url", base_url,
            "--out", str(out), "--token", TOKEN, "--concurrency", str(concurrency), "--uvloop"]


@dataclass
class Count:
    """One run's instructions (callgrind's Ir): the process started (``parent``) and the
    processes it started (``children``: the shard workers of ``--processes N``), summed."""

    parent: int
    children: int
    processes: int
    seconds: float

    @property
    def total(self) -> int:
        return self.parent + self.children


def instructions(cmd: list[str], work: Path, keep: Path | None = None) -> Count:
    """Instructions the command executed, every thread of it and of every process it started,
    and its wall seconds."""
    runs = Path(tempfile.mkdtemp(prefix="cg-", dir=work))
    env = {**os.environ, "AGILED_API_TOKEN": TOKEN, "PYTHONPATH": str(ROOT)}
    t0 = time.monotonic()
    proc = subprocess.run(["valgrind", "--tool=callgrind", "--trace-children=yes",
                           f"--callgrind-out-file={runs}/callgrind.%p", *cmd],
                          capture_output=True, env=env, cwd=ROOT)
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"{cmd[2:4]} exited {proc.returncode}: {proc.stderr.decode()[-800:]}")
    parent = children = processes = 0
    for out in sorted(runs.iterdir()):
        data = out.read_bytes()
        match = re.search(rb"^(?:summary|totals): (\d+)", data, re.M)
        if match is None:
            raise RuntimeError(f"no totals in {out}")
        processes += 1
        cmdline = re.search(rb"^cmd: (.*)$", data, re.M)
        if cmdline is not None and b" -c " in cmdline[1]:  # a shard worker (python -c ...)
            children += int(match[1])
        else:
            parent += int(match[1])
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        for out in runs.iterdir():
            shutil.move(out, keep / out.name)
    shutil.rmtree(runs)
    return Count(parent, children, processes, time.monotonic() - t0)


def wall(args: argparse.Namespace) -> None:
    """Alternating wall-clock runs: bulk (each of ``--processes``) and the bare loop on uvloop;
    with the server's (nginx's) CPU per invoice, what the 2-core model needs."""
    import statistics

    data = ROOT / "benchmarks" / "data"
    data.mkdir(exist_ok=True)
    path = make_input(data, args.wall)
    server = servers.start_nginx()
    names: dict[str, tuple[str, tuple[str, ...]]] = {
        f"bulk-p{n}": ("bulk", ("--rate", "1e9", "--processes", n)) for n in args.processes.split(",")}
    names["aiohttp-uvloop"] = ("aiohttp-uvloop", ())
    runs: dict[str, list[tuple[float, float, float]]] = {k: [] for k in names}
    try:
        with tempfile.TemporaryDirectory(prefix="bulk-wall-") as tmp:
            for _ in range(args.rounds):
                for name, (client, extra) in names.items():
                    m = run_client(CLIENTS[client], path, server, concurrency=args.concurrency, work=Path(tmp),
                                   bulk_args=extra)
                    per_k = 1000 / m.created
                    runs[name].append((m.rate, m.cpu * per_k, (m.server_cpu or 0.0) * per_k))
                    print(f"[wall] {name}: {m.rate:,.0f} invoices/s, {m.cpu * per_k:.3f} CPU s / 1k, "
                          f"server {(m.server_cpu or 0.0) * per_k:.3f} CPU s / 1k", flush=True)
    finally:
        server.stop()
    rate = {k: statistics.median(r for r, _, _ in v) for k, v in runs.items()}
    cpu = {k: statistics.median(c for _, c, _ in v) for k, v in runs.items()}
    srv = {k: statistics.median(c for _, _, c in v) for k, v in runs.items()}
    for name in names:
        if name != "aiohttp-uvloop":
            print(f"[wall] {name} / bare loop + uvloop: {rate[name] / rate['aiohttp-uvloop']:.2f}x the invoices/s "
                  f"at {cpu[name] / cpu['aiohttp-uvloop']:.2f}x the CPU per invoice (medians of {args.rounds})")
    print("[wall] nginx CPU s / 1k invoices (medians): " + ", ".join(f"{k} {v:.3f}" for k, v in srv.items()))
    bare, nginx = cpu["aiohttp-uvloop"], srv["aiohttp-uvloop"]
    print(f"[wall] 2-core ceilings from the CPU per invoice (1k invoices/s): bare loop "
          f"min(1/{bare:.3f}, 2/({bare:.3f}+{nginx:.3f})) = {ceiling(bare, nginx, 1):.2f}; " + "; ".join(
              f"{k} {ceiling(cpu[k], srv[k], int(k[6:])):.2f}" for k in names if k != "aiohttp-uvloop"))
    print(f"[wall] N processes beat the bare loop on 2 cores below {2 * ceiling(bare, nginx, 1) ** -1 - nginx:.3f} "
          "CPU s per 1k invoices, summed over the processes")


def ceiling(c_client: float, c_server: float, processes: int, cores: int = 2) -> float:
    """Invoices per unit time on ``cores`` cores, the server included, when the client's
    ``processes`` (each one core at most) need ``c_client`` CPU per invoice summed and the
    server ``c_server``: bound by the cores' total and by the processes' own cores."""
    return min(min(processes, cores) / c_client, cores / (c_client + c_server))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", type=int, default=500)
    p.add_argument("--large", type=int, default=2500)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--clients", default="bare,bulk", help="comma-separated: bare, bulk")
    p.add_argument("--repeat", type=int, default=1, help="runs of each size; the smallest count is kept")
    p.add_argument("--wall", type=int, default=0, help="also a wall-clock side-by-side on this many invoices")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds of --wall")
    p.add_argument("--no-callgrind", action="store_true", help="only the --wall check")
    p.add_argument("--processes", default="1", help="comma-separated --processes of bulk (e.g. 1,2)")
    p.add_argument("--keep", type=Path, help="keep the callgrind files in this directory")
    p.add_argument("--no-precompile", action="store_true",
                   help="do not byte-compile bulk/ and benchmarks/ first (remove their .pyc files): every "
                        "process compiles from source, as under PYTHONDONTWRITEBYTECODE=1 with no compiled tree")
    args = p.parse_args()
    precompile(not args.no_precompile)  # before any run (benchmarks._callgrind)
    if args.wall:
        wall(args)
    if args.no_callgrind:
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not installed", file=sys.stderr)
        return 2
    data = ROOT / "benchmarks" / "data"
    data.mkdir(exist_ok=True)
    inputs = {n: make_input(data, n) for n in (args.small, args.large)}
    server = servers.start_nginx()
    per: dict[str, float] = {}
    runs = [(c, n) for c in args.clients.split(",") for n in (map(int, args.processes.split(","))
                                                                if c == "bulk" else (1,))]
    try:
        with tempfile.TemporaryDirectory(prefix="bulk-instr-") as tmp:
            work = Path(tmp)
            for client, n_procs in runs:
                name = client if client != "bulk" or args.processes == "1" else f"bulk-p{n_procs}"
                counts: dict[int, Count] = {}
                for n, path in inputs.items():
                    out = work / f"out-{name}-{n}"
                    for _ in range(args.repeat):
                        keep = args.keep / f"{name}-{n}" if args.keep else None
                        got = instructions(command(client, path, server.base_url, out, args.concurrency, n_procs),
                                           work, keep)
                        if n not in counts or got.total < counts[n].total:
                            counts[n] = got
                        shutil.rmtree(out, ignore_errors=True) if out.is_dir() else out.unlink(missing_ok=True)
                small, large = counts[args.small], counts[args.large]
                per[name] = (large.total - small.total) / (args.large - args.small)
                print(f"{name}: {small.total:,} Ir for {args.small} ({small.seconds:.0f} s), "
                      f"{large.total:,} Ir for {args.large} ({large.seconds:.0f} s): "
                      f"{per[name]:,.0f} instructions per invoice (marginal)", flush=True)
                if large.processes > 1:
                    parent = (large.parent - small.parent) / (args.large - args.small)
                    print(f"{name}: {large.processes} processes; per invoice the parent {parent:,.0f}, the workers "
                          f"{per[name] - parent:,.0f}; fixed: parent {small.parent:,} Ir, workers "
                          f"{small.children:,} Ir at {args.small}", flush=True)
    finally:
        server.stop()
    for name in per:
        if name != "bare" and "bare" in per:
            print(f"{name} / bare loop: {per[name] / per['bare']:.2f}x the instructions per invoice")
    if "bulk-p1" in per:
        for name in per:
            if name.startswith("bulk-p") and name != "bulk-p1":
                print(f"{name} / bulk-p1: {per[name] / per['bulk-p1']:.2f}x the instructions per invoice "
                      f"(+{per[name] - per['bulk-p1']:,.0f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
