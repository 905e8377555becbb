"""Crash-and-resume as a property: SIGKILL the CLI at seeded random moments, re-run the same
command until it exits on its own, and the job ends exactly once, whatever the moments were.

The invariant is checked after *every* kill too: a duplicate at the API is never allowed, not
even transiently. The default run kills at least 20 times across the four targets (seeded, a
bounded number of kills, a timeout on every subprocess); ``pytest -m slow`` runs the soak
variant with more kills, more records and server faults.
"""

from __future__ import annotations

import random
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from harness import (
    SandboxServer,
    assert_counts,
    assert_exactly_once,
    assert_outputs_whole,
    created_count,
    start_cli,
    stop,
    support,
    upload_args,
    wait_until,
    write_input,
)

TARGETS = ["agiled", "anny", "chargeover", "coperniq"]


def _no_duplicates(sb: SandboxServer) -> None:
    counts = Counter(inv["external_id"] for inv in support(sb.target).invoices(sb.state()))
    dupes = {k: v for k, v in counts.items() if v > 1}
    assert not dupes, f"duplicate invoices at the API: {dupes}"


def kill_until_done(sb: SandboxServer, args_for: Callable[[random.Random], list[str]], *, kills: int, seed: int,
                    timeout: float = 120) -> tuple[int, subprocess.CompletedProcess[str]]:
    """Start the same command again and again, SIGKILLing it at seeded moments ``kills`` times,
    then let it run to its end. Returns (kills delivered, the last, unkilled run).

    A third of the moments are a random time after the start (while still importing, opening
    the job, sending the first requests); the others come when the server has created a random
    number (1-6) of further invoices, plus a random few milliseconds: so the kills land in the
    upload proper on every target, however fast it is, and the job is never done too early.
    """
    rng = random.Random(seed)
    delivered = 0
    for _ in range(kills):
        proc = start_cli(args_for(rng), sb.env)
        try:
            if rng.random() < 1 / 3:
                time.sleep(rng.uniform(0.05, 0.6))
            else:
                goal = created_count(sb) + rng.randint(1, 6)
                wait_until(lambda: proc.poll() is not None or created_count(sb) >= goal, timeout=60,
                           interval=0.01, what="progress before the kill")
                time.sleep(rng.uniform(0, 0.05))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                delivered += 1
            _, err = proc.communicate(timeout=30)
        finally:
            stop(proc)
        if proc.returncode not in (-signal.SIGKILL, 0):
            raise AssertionError(f"run exited {proc.returncode}: {err}")
        _no_duplicates(sb)
    proc = start_cli(args_for(rng), sb.env)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        stop(proc)
    return delivered, subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _scenario(target: str, tmp_path: Path, *, n: int, kills: int, seed: int, faults: dict[str, float],
              min_delivered: int) -> None:
    src, out = tmp_path / "in.ndjson", tmp_path / "run"
    records = write_input(src, n, seed=seed)
    with SandboxServer(target, latency_ms=20, seed=seed, **faults) as sb:
        # Same input and run directory every time; the concurrency may differ between runs (a
        # user may well change it when resuming), which must not matter.
        def args_for(rng: random.Random) -> list[str]:
            return upload_args(sb, src, out, "--concurrency", str(rng.choice([2, 4, 8])), "--retries", "12")

        delivered, done = kill_until_done(sb, args_for, kills=kills, seed=seed)
        assert done.returncode == 0, done.stderr
        assert delivered >= min_delivered, f"only {delivered} of {kills} kills landed before the run ended"
        assert_exactly_once(sb, out, records)
    assert_counts(out, records)
    assert_outputs_whole(out)


@pytest.mark.parametrize("target", TARGETS)
def test_sigkill_at_random_moments_then_resume(target: str, tmp_path: Path) -> None:
    # 6 kills per target, 24 in all.
    _scenario(target, tmp_path, n=70, kills=6, seed=600 + TARGETS.index(target), faults={}, min_delivered=6)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("target", TARGETS)
def test_soak_sigkill_with_server_faults(target: str, seed: int, tmp_path: Path) -> None:
    # 25 kills per run, with answers lost after commit, dropped connections and 5xx: the kill
    # lands in every kind of in-between state (a create sent but unanswered, a retry pending).
    _scenario(target, tmp_path, n=300, kills=25, seed=7000 + 10 * seed + TARGETS.index(target),
              faults={"lose_rate": 0.1, "drop_rate": 0.05, "fail_rate": 0.05}, min_delivered=25)
