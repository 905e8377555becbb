"""The conformance suite every target passes, end to end through the CLI against its sandbox.

happy path, 429 then success, 5xx exhausted (stop, then resume), 4xx rejected, answers lost
after commit, resume skips finished work, unicode payloads, kill and resume (kills triggered
by progress: a proxy holds the run's k-th request and the run is killed while it waits).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from harness import (
    SandboxServer,
    assert_counts,
    assert_exactly_once,
    assert_outputs_whole,
    cli,
    kill_until_done,
    read_reasons,
    resume_to_the_end,
    summary,
    support,
    upload_args,
    write_input,
)
from hostile_proxy import HostileProxy

import bulk.targets
from bulk.generate import generate

TARGETS = bulk.targets.names()  # the registered targets (entry points included)


@pytest.fixture(params=TARGETS)
def target(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_happy_path_with_unicode(target: str, tmp_path: Path) -> None:
    src, out = tmp_path / "in.ndjson", tmp_path / "run"
    records = write_input(src, 40, seed=11)
    with SandboxServer(target) as sb:
        done = cli(upload_args(sb, src, out, "--concurrency", "8"), sb.env)
        assert done.returncode == 0, done.stderr
        assert_exactly_once(sb, out, records)
        stored = {i["external_id"]: i for i in support(target).invoices(sb.state())}
    non_ascii = [r for r in records if any(not line.title.isascii() for line in r.lines)]
    assert non_ascii, "the generator should produce unicode titles"
    for r in non_ascii:
        assert sorted(stored[r.external_id]["titles"]) == sorted(line.title for line in r.lines)
    s = summary(out)
    assert s["complete"] is True
    assert s["records"]["created"] == 40 and s["records"]["read"] == 40
    assert "created" in done.stderr and str(out) in done.stderr


def test_throttled_then_success(target: str, tmp_path: Path) -> None:
    src, out = tmp_path / "in.ndjson", tmp_path / "run"
    # 20 records: 16 requests at once against a bucket of 4 are throttled at the start; each
    # round of 429s costs a Retry-After of at least 1 s, so more records only add rounds. A
    # target that batches its creates (ChargeOver's _bulk: one request, many records) keeps 50.
    records = write_input(src, 50 if getattr(support(target), "BATCHED", False) else 20, seed=12)
    # The small bucket throttles a fast client; the seeded throttle_rate throttles a slow one
    # too (a machine too loaded to exceed 40/s would otherwise prove nothing).
    with SandboxServer(target, rate_limit=40, read_rate_limit=80, burst=4, throttle_rate=0.15, seed=12) as sb:
        done = cli(upload_args(sb, src, out, "--concurrency", "16"), sb.env)
        assert done.returncode == 0, done.stderr
        assert_exactly_once(sb, out, records)
        assert sb.state()["requests"]["throttled"] > 0
    assert summary(out)["throttled"] > 0


def test_server_down_stops_resumably_then_finishes(target: str, tmp_path: Path) -> None:
    src, out = tmp_path / "in.ndjson", tmp_path / "run"
    records = write_input(src, 20, seed=13)
    with SandboxServer(target, fail_rate=1.0) as sb:
        args = upload_args(sb, src, out, "--retries", "2", "--give-up-after", "1.5")
        stopped = cli(args, sb.env, timeout=60)
        assert stopped.returncode == 3, stopped.stderr
        assert "no successful answer" in stopped.stderr and "resume" in stopped.stderr
        assert support(target).invoices(sb.state()) == []
        sb.faults(fail_rate=0.0)
        resume_to_the_end(sb, args, out, records)


def test_refused_record_fails_with_api_status_and_run_goes_on(target: str, tmp_path: Path) -> None:
    src, out = tmp_path / "in.ndjson", tmp_path / "run"
    good = [json.loads(line) for line in generate(12, seed=14)]
    bad = support(target).refusable(good[5])
    bad["external_id"] = "INV-REFUSED-1"
    lines = [json.dumps(r, ensure_ascii=False).encode() for r in [*good[:5], bad, *good[5:]]]
    records = write_input(src, 0, extra_lines=lines)
    with SandboxServer(target) as sb:
        done = cli(upload_args(sb, src, out), sb.env)
        assert done.returncode == 1, done.stderr
        created = [r for r in records if r.external_id != "INV-REFUSED-1"]
        invoices = support(target).invoices(sb.state())
        assert sorted(i["external_id"] for i in invoices) == sorted(r.external_id for r in created)
    reasons = read_reasons(out)
    assert len(reasons) == 1
    assert reasons[0]["line"] == "6" and reasons[0]["external_id"] == "INV-REFUSED-1"
    assert reasons[0]["kind"] == "failed" and reasons[0]["http_status"].startswith("4"), reasons
    assert reasons[0]["message"]
    assert (out / "failed.ndjson").read_bytes() == lines[5] + b"\n"
    assert summary(out)["records"]["failed"] == 1


def test_lost_answers_and_drops_never_duplicate(target: str, tmp_path: Path) -> None:
    src, out = tmp_path / "in.ndjson", tmp_path / "run"
    records = write_input(src, 40, seed=15)
    with SandboxServer(target, lose_rate=0.25, drop_rate=0.1, seed=3) as sb:
        done = cli(upload_args(sb, src, out, "--retries", "12", "--concurrency", "8"), sb.env)
        assert done.returncode == 0, done.stderr
        assert_exactly_once(sb, out, records)
    assert summary(out)["retries"] > 0


def test_resume_skips_finished_work(target: str, tmp_path: Path) -> None:
    src, out = tmp_path / "in.ndjson", tmp_path / "run"
    records = write_input(src, 30, seed=16)
    with SandboxServer(target) as sb:
        first = cli(upload_args(sb, src, out), sb.env)
        assert first.returncode == 0, first.stderr
        before = sb.state()["requests"]["total"]
        again = cli(upload_args(sb, src, out), sb.env)
        assert again.returncode == 0, again.stderr
        assert sb.state()["requests"]["total"] - before <= 2  # at most an auth smoke test
        assert_exactly_once(sb, out, records)
    s = summary(out)
    assert s["records"]["already_done"] == 30 and s["this_run"]["created"] == 0 and s["records"]["created"] == 30


def test_kill_and_resume(target: str, tmp_path: Path) -> None:
    # 4 SIGKILLs, each while the run waits for its k-th request (held at a faithful proxy), so
    # every kill lands mid-run on a fast machine or a slow one; the same command then finishes.
    seed = 170 + TARGETS.index(target)  # stable across processes, unlike hash(target)
    src, out = tmp_path / "in.ndjson", tmp_path / "run"
    records = write_input(src, 60, seed=17)
    with SandboxServer(target, latency_ms=15, seed=5) as sb, \
            HostileProxy(sb.base_url, seed=seed, rates={}) as proxy:
        def args_for(rng: random.Random) -> list[str]:
            return upload_args(sb, src, out, "--concurrency", "6", via=proxy)

        kills = kill_until_done(sb, proxy, args_for, kills=4, seed=seed, records=len(records))
        assert kills.delivered == 4, f"only {kills.delivered} of 4 kills landed mid-run (exits {kills.exits})"
        assert kills.done.returncode == 0, kills.done.stderr
        assert_exactly_once(sb, out, records)
    assert_counts(out, records)
    assert_outputs_whole(out)


def test_a_corrected_rerun_updates_exactly_the_corrected_invoices(target: str, tmp_path: Path) -> None:
    """``--on-existing update`` in a new run directory (tests/test_on_existing.py has the rest:
    skip, fail, kills, refusals): the corrected invoices change to match, none is created."""
    from test_on_existing import _assert_matches, _at_server, _corrected, _docs, _write

    docs = _docs(seed=1310)[:6]
    fixed = _corrected(docs)
    changed = {d["external_id"] for d, f in zip(docs, fixed, strict=True) if d != f}
    assert changed
    first, second = tmp_path / "first.ndjson", tmp_path / "second.ndjson"
    _write(first, docs)
    _write(second, fixed)
    with SandboxServer(target) as sb:
        assert cli(upload_args(sb, first, tmp_path / "run1"), sb.env).returncode == 0
        before = _at_server(target, sb)
        done = cli(upload_args(sb, second, tmp_path / "run2", "--on-existing", "update"), sb.env)
        assert done.returncode == 0, done.stderr
        after = _at_server(target, sb)
    assert {k: v["id"] for k, v in after.items()} == {k: v["id"] for k, v in before.items()}  # none created
    assert all(after[k] == before[k] for k in after if k not in changed)
    _assert_matches(target, after, fixed)
    r = summary(tmp_path / "run2")["records"]
    assert (r["created"], r["updated"], r["unchanged"]) == (0, len(changed), len(docs) - len(changed)), r
