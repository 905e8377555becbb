"""Crash-and-resume as a property: SIGKILL the CLI at seeded random moments, re-run the same
command until it exits on its own, and the job ends exactly once, whatever the moments were.

The moments are progress, not time: a proxy (tests/hostile_proxy.py, forwarding faithfully
here) holds the run's k-th request (k seeded) and the run is killed while it waits for that
answer, so every kill lands mid-run on a fast machine or a slow one; the held request is then
delivered late, after the kill. The invariant is checked after *every* kill too: a duplicate
at the API is never allowed, not even transiently. The default run kills 24 times across the
four targets (seeded, a bounded number of kills, a timeout on every subprocess); ``pytest -m
slow`` runs the soak variant with more kills, more records and server faults.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from harness import (
    SandboxServer,
    assert_counts,
    assert_exactly_once,
    assert_outputs_whole,
    kill_until_done,
    upload_args,
    write_input,
)
from hostile_proxy import HostileProxy

import bulk.targets

TARGETS = bulk.targets.names()  # the registered targets (entry points included)


def _scenario(target: str, tmp_path: Path, *, n: int, kills: int, seed: int, faults: dict[str, float],
              min_delivered: int) -> None:
    src, out = tmp_path / "in.ndjson", tmp_path / "run"
    records = write_input(src, n, seed=seed)
    with SandboxServer(target, latency_ms=20, seed=seed, **faults) as sb, \
            HostileProxy(sb.base_url, seed=seed, rates={}) as proxy:
        # Same input and run directory every time; the concurrency may differ between runs (a
        # user may well change it when resuming), which must not matter.
        def args_for(rng: random.Random) -> list[str]:
            return upload_args(sb, src, out, "--concurrency", str(rng.choice([2, 4, 8])), "--retries", "12",
                               via=proxy)

        kills_done = kill_until_done(sb, proxy, args_for, kills=kills, seed=seed, records=len(records))
        done, delivered = kills_done.done, kills_done.delivered
        assert done.returncode == 0, done.stderr
        assert delivered >= min_delivered, \
            f"only {delivered} of {kills} kills landed before the run ended (exits {kills_done.exits})"
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
