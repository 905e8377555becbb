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
from pathlib import Path

from benchmarks import servers
from benchmarks.run import CLIENTS, make_input, run_client

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-token"


def command(client: str, input_path: Path, base_url: str, out: Path, concurrency: int) -> list[str]:
    if client == "bulk":
        return [sys.executable, "-m", "bulk", "upload", str(input_path), "--base-url", base_url, "--quiet",
                "--out", str(out), "--concurrency", str(concurrency), "--rate", "1e9", "--processes", "1",
                # callgrind runs ~50x slower: a checkpoint every 50 s of it is one a second
                # natively, so the count holds the checkpoints a real run of that size makes.
                "--checkpoint-every", "50"]
    return [sys.executable, "-m", "benchmarks.clients.aiohttp_pool", str(input_path), "--base-url", base_url,
            "--out", str(out), "--token", TOKEN, "--concurrency", str(concurrency), "--uvloop"]


def instructions(cmd: list[str], work: Path) -> tuple[int, float]:
    """Instructions (callgrind's Ir) the command executed, all its threads, and its wall seconds."""
    out = work / f"callgrind.{os.getpid()}.{len(list(work.iterdir()))}"
    env = {**os.environ, "AGILED_API_TOKEN": TOKEN, "PYTHONPATH": str(ROOT)}
    t0 = time.monotonic()
    proc = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *cmd],
                          capture_output=True, env=env, cwd=ROOT)
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"{cmd[2:4]} exited {proc.returncode}: {proc.stderr.decode()[-800:]}")
    match = re.search(rb"^(?:summary|totals): (\d+)", out.read_bytes(), re.M)
    if match is None:
        raise RuntimeError(f"no totals in {out}")
    out.unlink()
    return int(match[1]), time.monotonic() - t0


def wall(args: argparse.Namespace) -> None:
    """Alternating wall-clock runs: bulk --processes 1 and the bare loop on uvloop."""
    import statistics

    data = ROOT / "benchmarks" / "data"
    data.mkdir(exist_ok=True)
    path = make_input(data, args.wall)
    server = servers.start_nginx()
    runs: dict[str, list[tuple[float, float]]] = {"bulk": [], "aiohttp-uvloop": []}
    try:
        with tempfile.TemporaryDirectory(prefix="bulk-wall-") as tmp:
            for _ in range(args.rounds):
                for name in runs:
                    m = run_client(CLIENTS[name], path, server, concurrency=args.concurrency, work=Path(tmp),
                                   bulk_args=("--rate", "1e9", "--processes", "1"))
                    runs[name].append((m.rate, m.cpu / m.created * 1000))
                    print(f"[wall] {name}: {m.rate:,.0f} invoices/s, {m.cpu / m.created * 1000:.3f} CPU s / 1k",
                          flush=True)
    finally:
        server.stop()
    rate = {k: statistics.median(r for r, _ in v) for k, v in runs.items()}
    cpu = {k: statistics.median(c for _, c in v) for k, v in runs.items()}
    print(f"[wall] bulk --processes 1 / bare loop + uvloop: {rate['bulk'] / rate['aiohttp-uvloop']:.2f}x the "
          f"invoices/s at {cpu['bulk'] / cpu['aiohttp-uvloop']:.2f}x the CPU per invoice (medians of {args.rounds})")


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
    args = p.parse_args()
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
    try:
        with tempfile.TemporaryDirectory(prefix="bulk-instr-") as tmp:
            work = Path(tmp)
            for client in args.clients.split(","):
                counts, secs = {}, {}
                for n, path in inputs.items():
                    out = work / f"out-{client}-{n}"
                    for _ in range(args.repeat):
                        got = instructions(command(client, path, server.base_url, out, args.concurrency), work)
                        if n not in counts or got[0] < counts[n]:
                            counts[n], secs[n] = got
                        shutil.rmtree(out, ignore_errors=True) if out.is_dir() else out.unlink(missing_ok=True)
                per[client] = (counts[args.large] - counts[args.small]) / (args.large - args.small)
                print(f"{client}: {counts[args.small]:,} Ir for {args.small} ({secs[args.small]:.0f} s), "
                      f"{counts[args.large]:,} Ir for {args.large} ({secs[args.large]:.0f} s): "
                      f"{per[client]:,.0f} instructions per invoice (marginal)", flush=True)
    finally:
        server.stop()
    if "bare" in per and "bulk" in per:
        print(f"bulk / bare loop: {per['bulk'] / per['bare']:.2f}x the instructions per invoice")
    return 0


if __name__ == "__main__":
    sys.exit(main())
