"""The benchmark harness works end to end on a tiny input (the benchmarks themselves are not
part of the test run: ``python -m benchmarks.run``, see benchmarks/README.md).

It uses the Python canned server (``--no-nginx``), so it needs nothing beyond the test extra,
which installs every baseline client (requests, httpx, uvloop)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from harness import REPO, client_env

CLIENT_LABELS = ("bulk (CLI)", "bare aiohttp loop", "bare aiohttp loop + uvloop", "httpx.AsyncClient + gather",
                 "requests.Session loop")


def test_the_harness_runs_every_client_on_every_scenario(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--tiny", "--no-nginx", "--scenarios", "none,latency,rate",
         "--work", str(tmp_path / "work"), "--results", str(tmp_path / "results")],
        env=client_env({}), capture_output=True, text=True, timeout=180, cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    table = done.stdout
    assert "skipping" not in done.stderr  # every client ran
    for title in ("no latency, no limit", "5 ms latency", "server limit R = 1000"):
        assert title in table
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| client")]
    assert sorted({row.split(" | ")[0][2:] for row in rows}) == sorted(CLIENT_LABELS)
    assert len(rows) == 3 * len(CLIENT_LABELS)
    assert "python canned server" in table
    raw = json.loads(next((tmp_path / "results").glob("*.json")).read_text())
    runs = [run for scenario in raw["scenarios"] for run in scenario["runs"]]
    assert len(runs) == 3 * len(CLIENT_LABELS)
    assert all(run["exit_code"] == 0 and run["created"] == run["records"] for run in runs), runs
    assert (tmp_path / "results").glob("*.md")


def test_the_limit_scenario_runs_and_counts_the_429s(tmp_path: Path) -> None:
    """The 'limit' scenario (nginx limit_req burst 5; without nginx, the sandbox with a bucket
    of 6) on a tiny input: bulk and the bare loop finish and the table has R's columns."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--tiny", "--scenarios", "limit", "--clients", "bulk,aiohttp",
         "--limit-capacity", "--work", str(tmp_path / "work"), "--results", str(tmp_path / "results")],
        env=client_env({}), capture_output=True, text=True, timeout=180, cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "server limit R = 200 requests/s, burst 5" in done.stdout
    assert "capacity at R = 200: the same server with burst 1,000,000" in done.stdout  # --limit-capacity
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and not line.startswith("| client")]
    assert [row.split(" | ")[0][2:] for row in rows] == ["bulk (CLI)", "bare aiohttp loop"] * 2
    assert all(" of " in row and "%" in row for row in rows)  # the 429 share column
    raw = json.loads(next((tmp_path / "results").glob("*.json")).read_text())
    assert len(raw["scenarios"]) == 2
    for scenario in raw["scenarios"]:
        runs = scenario["runs"]
        assert len(runs) == 2 and all(r["exit_code"] == 0 and r["created"] == r["records"] == 50 for r in runs), runs
        assert all(r["extra"]["server_requests"] >= 51 for r in runs)  # counted at the server




def test_precompile_writes_the_bytecode_children_read_and_no_precompile_removes_it(tmp_path: Path) -> None:
    """benchmarks.run / benchmarks.instructions byte-compile the tree before any round (the
    machine's PYTHONDONTWRITEBYTECODE=1 only stops writing: a child reads what is there), and
    ``--no-precompile`` removes it for the A/B. On a package of its own, not on this tree."""
    import importlib.util

    from benchmarks._callgrind import precompile

    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "mod.py").write_text("X = 1\n")
    cached = Path(importlib.util.cache_from_source(str(pkg / "sub" / "mod.py")))

    def child_loads() -> str:
        probe = subprocess.run([sys.executable, "-v", "-c", "import pkg.sub.mod"], capture_output=True, text=True,
                               env={**client_env({}), "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(tmp_path)},
                               cwd=tmp_path)
        assert probe.returncode == 0, probe.stderr[-2000:]
        return probe.stderr

    assert f"code object from '{cached}'" not in child_loads()
    assert not cached.exists()  # the child wrote nothing
    precompile(True, [pkg])
    assert cached.is_file()
    assert f"code object from '{cached}'" in child_loads()  # the child read the .pyc
    precompile(False, [pkg])
    assert not cached.exists() and not (pkg / "__pycache__").exists()


def test_pin_keeps_every_client_off_the_servers_cpu_and_reports_the_hosts_steal(tmp_path: Path) -> None:
    """``--pin``: the server gets the last CPU to itself, each client runs on the others (what
    the client's process was allowed, read by benchmarks.spawn while it ran); the table says so,
    with the host's CPU steal and each round's ratio. With one CPU it is a usage error."""
    import os

    cpus = sorted(os.sched_getaffinity(0))
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--tiny", "--no-nginx", "--pin", "--scenarios", "none",
         "--clients", "bulk-p1,aiohttp-uvloop", "--work", str(tmp_path / "work"),
         "--results", str(tmp_path / "results")],
        env=client_env({}), capture_output=True, text=True, timeout=180, cwd=REPO,
    )
    if len(cpus) < 2:
        assert done.returncode == 2 and "--pin needs at least 2 CPUs" in done.stderr, done.stderr[-2000:]
        return
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"CPUs: pinned: the server on CPU {cpus[-1]}, each client on CPU {', '.join(map(str, cpus[:-1]))}" \
        in done.stdout
    assert "Host CPU steal during the runs" in done.stdout
    raw = json.loads(next((tmp_path / "results").glob("*.json")).read_text())
    runs = raw["scenarios"][0]["runs"]
    bulk, bare = (next(r for r in runs if r["client"] == name) for name in ("bulk-p1", "aiohttp-uvloop"))
    ratio = (bulk["created"] / bulk["wall"]) / (bare["created"] / bare["wall"])
    assert f"bulk --processes 1 x bare loop, round by round: {ratio:.2f}." in done.stdout  # --tiny: one round
    assert len(runs) == 2 and all(run["exit_code"] == 0 and run["created"] == run["records"] for run in runs)
    assert all(run["extra"]["cpus"] == cpus[:-1] for run in runs), [run["extra"]["cpus"] for run in runs]
    assert all(0.0 <= run["extra"]["steal"] < 1.0 for run in runs)
