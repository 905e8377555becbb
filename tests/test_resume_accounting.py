"""The run directory describes each record exactly once, whatever the kill moment (issue 10).

A resumed run must never record again a record an earlier run already recorded: the ID map,
the failed files, the summary's counts and its per-currency totals. The API side is checked
elsewhere (test_kill_resume.py); this file audits the run directory itself, after *every*
run, killed or not, against what its resume file says:

- every output row up to the checkpointed size names a distinct record (at most once);
- the lines those rows name are exactly the lines the checkpoint calls finished (below the
  watermark, or in ``done_beyond``): a recorded line the checkpoint forgot would be redone,
  and recorded again, by the next run;
- the checkpoint's tally (what the next run continues from) counts those rows, and its
  totals are the money rule over them.

The kills are triggered by progress (rows in ``id_map.csv``, requests counted by the
sandbox), never by a sleep; the concurrency changes between runs (a smaller one makes the
producer of a resumed run wait before it has re-read the lines an earlier run finished out
of order: the moment the defect of issue 10 lived in); a few input lines are invalid.
"""

from __future__ import annotations

import csv
import io
import random
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from harness import (
    SandboxServer,
    assert_counts,
    assert_exactly_once,
    assert_outputs_whole,
    expected_totals,
    kill_when,
    start_cli,
    stop,
    summary,
    upload_args,
    write_input,
)

from bulk.checkpoint import read_checkpoint
from bulk.money import CurrencyTotals
from bulk.records import Record

BAD_LINES = [
    b'{"external_id": "BAD-1", "currency": "EUR"}',
    b"not json at all",
    b'{"external_id": "BAD-2", "customer": {"external_id": "C", "email": "x@example.com"}, '
    b'"currency": "EUR", "lines": [{"title": "t", "quantity": -1, "unit_price": "1", "tax_rate": "0"}]}',
    b'{"external_id": "INV-000003", "currency": "EUR"}',
]


def _rows(path: Path, size: int) -> list[dict[str, str]]:
    """The CSV rows of ``path`` within its first ``size`` bytes (what the checkpoint covers)."""
    if size == 0 or not path.exists():
        return []
    return list(csv.DictReader(io.StringIO(path.read_bytes()[:size].decode("utf-8"))))


def _requests(sb: SandboxServer) -> int:
    return int(sb.state()["requests"]["total"])


def _id_map_rows(out: Path) -> int:
    path = out / "id_map.csv"
    return max(0, path.read_bytes().count(b"\n") - 1) if path.exists() else 0


def assert_described_at_most_once(out: Path, records: list[Record], n_lines: int) -> dict[str, Any]:
    """The run directory, as its resume file defines it, describes each record at most once."""
    cp = read_checkpoint(out)
    if cp is None:
        return {}
    sizes = cp["outputs"]
    created = _rows(out / "id_map.csv", sizes.get("id_map.csv", 0))
    reasons = _rows(out / "failed_reasons.csv", sizes.get("failed_reasons.csv", 0))
    ids = Counter(r["external_id"] for r in created)
    twice = {k: v for k, v in ids.items() if v > 1}
    assert not twice, f"id_map.csv holds external ids more than once: {sorted(twice)[:10]} ({len(twice)})"
    lines = Counter([int(r["line"]) for r in created] + [int(r["line"]) for r in reasons])
    twice_lines = sorted(k for k, v in lines.items() if v > 1)
    assert not twice_lines, f"lines recorded more than once: {twice_lines[:10]}"
    failed_lines = (out / "failed.ndjson").read_bytes()[: sizes.get("failed.ndjson", 0)].count(b"\n")
    assert failed_lines == len(reasons), (failed_lines, len(reasons))
    # What the checkpoint calls finished is exactly what the outputs record.
    watermark = int(cp["watermark"][1])
    finished = set(range(1, min(watermark, n_lines + 1))) | set(cp["done_beyond"])
    forgotten = sorted(set(lines) - finished)
    assert not forgotten, \
        f"recorded lines the checkpoint does not call finished (a resume redoes them): {forgotten[:10]}"
    unrecorded = sorted(finished - set(lines))
    assert not unrecorded, f"lines called finished but recorded nowhere: {unrecorded[:10]}"
    # The tally the next run continues from counts those rows, and its totals are theirs.
    tally = cp["tally"]
    assert tally["created"] == len(created), (tally, len(created))
    assert tally["rejected"] + tally["failed"] + tally["uncertain"] == len(reasons), (tally, len(reasons))
    assert tally["read"] == len(created) + len(reasons), tally
    by_id = {r.external_id: r for r in records}
    totals = CurrencyTotals()
    for row in created:
        totals.add(row["currency"], by_id[row["external_id"]].totals())
    assert tally["totals"] == totals.to_json(), "checkpointed totals differ from the ID map's rows"
    # summary.json is written after the commit: it may lag one checkpoint, never lead.
    s = summary(out)["records"] if (out / "summary.json").exists() else None
    if s is not None:
        assert s["created"] <= len(created) and s["rejected"] <= len(reasons), (s, len(created), len(reasons))
    return cp


def _kill_on_progress(sb: SandboxServer, out: Path, args: list[str], rng: random.Random) -> bool:
    """Start a run and SIGKILL it at a progress-triggered moment; True when the kill landed."""
    if rng.random() < 0.5:
        rows = _id_map_rows(out) + rng.randint(3, 40)  # rows flushed by a checkpoint
        run = kill_when(sb, args, lambda: _id_map_rows(out) >= rows, what="id_map rows", must_land=False)
    else:
        requests = _requests(sb) + rng.randint(5, 120)
        run = kill_when(sb, args, lambda: _requests(sb) >= requests, what="requests at the sandbox",
                        must_land=False)
    assert run.returncode in (-signal.SIGKILL, 0, 1), run.stderr
    return run.landed


@pytest.mark.parametrize("seed", [11, 12])
def test_each_record_described_exactly_once_across_sigkills_and_concurrency_changes(seed: int, tmp_path: Path) -> None:
    src, out = tmp_path / "in.ndjson", tmp_path / "run"
    n = 300
    records = write_input(src, n, seed=seed, extra_lines=BAD_LINES)
    n_lines = n + len(BAD_LINES)
    rng = random.Random(seed)
    # Slow answers (past the client's timeout) hold a record back while the ones after it
    # finish: the watermark stalls and done_beyond grows, across kills.
    faults = {"lose_rate": 0.05, "drop_rate": 0.03, "fail_rate": 0.05, "slow_rate": 0.04, "slow_ms": 1500,
              "latency_ms": 5}
    with SandboxServer("agiled", seed=seed, **faults) as sb:
        kills = 0
        for i in range(8):
            concurrency = [32, 1, 16, 2, 64, 1, 8, 3][i]
            args = upload_args(sb, src, out, "--concurrency", str(concurrency), "--retries", "30",
                               "--timeout", "0.4", "--checkpoint-every", "0.1", "--rate", "150")
            kills += _kill_on_progress(sb, out, args, rng)
            assert_described_at_most_once(out, records, n_lines)
        assert kills >= 6, f"only {kills} of 8 kills landed"
        sb.faults(lose_rate=0, drop_rate=0, fail_rate=0, slow_rate=0)
        args = upload_args(sb, src, out, "--concurrency", "5", "--retries", "30", "--timeout", "5")
        proc = start_cli(args, sb.env)
        try:
            _, err = proc.communicate(timeout=120)
        finally:
            stop(proc)
        assert proc.returncode == 1, err  # finished; the bad lines are rejected
        assert_described_at_most_once(out, records, n_lines)
        assert_exactly_once(sb, out, records)
    assert_counts(out, records, rejected=len(BAD_LINES))
    assert summary(out)["totals"] == expected_totals(records)
    assert_outputs_whole(out)
