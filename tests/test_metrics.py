"""Benchmark measurements (issue 15), through the CLI against the real sandbox over real sockets:
latency percentiles and status codes, timeline.csv, histograms across resumed runs, upload
processes and shards, open loop against a stalling server, thresholds and /metrics.

Nothing here depends on machine speed: the injected latency is a lower bound, the stall is
triggered by a request count (a request the proxy holds), kills and scrapes by progress.
"""

from __future__ import annotations

import base64  # noqa: F401 - documents that latency.hdr.json values are base64 text
import csv
import json
import re
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from harness import SandboxServer, cli, start_cli, stop, summary, upload_args, wait_until, write_input
from hdrh.histogram import HdrHistogram
from hostile_proxy import HostileProxy

from bulk.thresholds import parse_threshold

LATENCY_MS = 40
TIMELINE_HEADER = ["time", "elapsed_s", "requests_started", "requests_finished", "invoices_created", "throttled",
                   "errors", "p50_ms", "p99_ms"]


def _hdr(out: Path) -> dict[str, HdrHistogram]:
    doc = json.loads((out / "latency.hdr.json").read_text())
    return {kind: HdrHistogram.decode(value.encode()) for kind, value in doc.items()}


def _combined(out: Path, kinds: tuple[str, ...] = ("read", "write")) -> HdrHistogram:
    """Every request of the run (each in exactly one kind's histogram)."""
    hists = _hdr(out)
    total = HdrHistogram(1, 3_600_000_000, 3)
    for kind in kinds:
        if kind in hists:
            total.add(hists[kind])
    return total


def _timeline(out: Path) -> list[dict[str, str]]:
    text = (out / "timeline.csv").read_text()
    assert text.endswith("\n"), "a torn last line"
    rows = list(csv.reader(text.splitlines()))
    assert rows[0] == TIMELINE_HEADER
    for row in rows[1:]:
        assert len(row) == len(TIMELINE_HEADER), row
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", row[0]), row
    return [dict(zip(TIMELINE_HEADER, row, strict=True)) for row in rows[1:]]  # lengths asserted above


def _assert_timeline_sums(out: Path, s: dict[str, Any], finished: int | None = None, resumed: bool = False) -> None:
    """The columns add up to the summary; a row has percentiles exactly when requests finished
    in it, except (``resumed``) the resumed run's first row: it also carries what the killed run
    finished after its last row, whose latencies are in the job's histogram, not this second's."""
    rows = _timeline(out)
    total = lambda col: sum(int(r[col]) for r in rows)  # noqa: E731
    assert total("requests_started") == s["requests"]
    assert total("requests_finished") == (s["requests"] if finished is None else finished)
    assert total("invoices_created") == s["records"]["created"]
    assert total("throttled") == s["throttled"]
    carried = 0
    for r in rows:
        if int(r["requests_finished"]) and r["p50_ms"]:
            assert float(r["p50_ms"]) <= float(r["p99_ms"])
        elif int(r["requests_finished"]):
            carried += 1
            assert resumed and carried == 1 and r["p99_ms"] == "", rows
        else:
            assert r["p50_ms"] == r["p99_ms"] == ""


def _assert_consistent(s: dict[str, Any], unanswered: int = 0) -> None:
    """Per key: the status counts add up to the histogram's count, percentiles in order; the
    kinds' counts add up to the summary's requests (less those a killed run never saw answered)."""
    lat, codes = s["latency_ms"], s["status_codes"]
    assert set(lat) == set(codes)
    for key, st in lat.items():
        assert st["count"] == sum(codes[key].values()), key
        assert st["p50"] <= st["p90"] <= st["p99"] <= st["p999"] <= st["max"], (key, st)
    assert sum(lat[k]["count"] for k in ("read", "write") if k in lat) == s["requests"] - unanswered


@pytest.fixture(scope="module")
def latency_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], str]:
    tmp = tmp_path_factory.mktemp("latency")
    src = tmp / "in.ndjson"
    write_input(src, 40, seed=3)
    with SandboxServer("agiled", latency_ms=LATENCY_MS) as sb:
        out = tmp / "run"
        done = cli(upload_args(sb, src, out, "--concurrency", "8"), sb.env)
        assert done.returncode == 0, done.stderr
    return out, summary(out), done.stderr


def test_percentiles_against_a_sandbox_with_fixed_latency(latency_run: tuple[Path, dict[str, Any], str]) -> None:
    out, s, stderr = latency_run
    _assert_consistent(s)
    lat = s["latency_ms"]
    assert {"read", "write", "invoice"} <= set(lat)
    assert lat["invoice"]["count"] == 40 == s["status_codes"]["invoice"]["201"]
    for key, st in lat.items():
        assert st["p50"] >= LATENCY_MS, (key, st)  # every request waited the injected latency
        assert st["mean"] >= LATENCY_MS
    # latency.hdr.json holds the same histograms
    hists = _hdr(out)
    assert {k: h.get_total_count() for k, h in hists.items()} == {k: v["count"] for k, v in lat.items()}
    assert s["late_starts"] == 0 and s["arrival_rate"] is None
    line = next(x for x in stderr.splitlines() if "latency:" in x)
    assert f"write p50 {lat['write']['p50']:g} ms, p99 {lat['write']['p99']:g} ms" in line
    assert f"201x{s['status_codes']['write']['201']}" in line


def test_timeline_sums_equal_the_summary(latency_run: tuple[Path, dict[str, Any], str]) -> None:
    out, s, _ = latency_run
    _assert_timeline_sums(out, s)
    assert any(float(r["p50_ms"] or 0) >= LATENCY_MS for r in _timeline(out))


def test_a_resumed_runs_histograms_include_the_killed_runs(tmp_path: Path) -> None:
    src = tmp_path / "in.ndjson"
    records = write_input(src, 60, seed=11)
    out = tmp_path / "run"
    with SandboxServer("agiled") as sb, HostileProxy(sb.base_url, seed=1, rates={}) as px:
        args = upload_args(sb, src, out, "--concurrency", "4", "--checkpoint-every", "0.05", via=px)
        # held at the 40th request: the run cannot finish, checkpoints keep being taken
        hold = px.hold_after(40)
        proc = start_cli(args, sb.env)
        try:
            assert hold.reached.wait(60), proc.stderr.read() if proc.poll() is not None else "no 40th request"
            wait_until(lambda: (out / "latency.hdr.json").exists()
                       and _combined(out).get_total_count() >= 20, timeout=30, what="a checkpointed histogram")
            proc.kill()
            proc.wait(30)
        finally:
            stop(proc)
        first = _combined(out).get_total_count()
        _timeline(out)  # whole rows after a kill -9
        hold.release()
        px.drain()
        seen = px.seen
        done = cli(args, sb.env)
        assert done.returncode == 0, done.stderr
        second_run = px.seen - seen
        assert len(sb.state()["invoices"]) == len(records)
    s = summary(out)
    total = _combined(out).get_total_count()
    assert total >= first + second_run > second_run  # the killed run's requests are in
    # requests in flight when the run was killed were counted as sent, but never answered:
    # no latency for them (at most --concurrency)
    unanswered = s["requests"] - total
    assert 0 <= unanswered <= 4
    _assert_consistent(s, unanswered)
    _assert_timeline_sums(out, s, finished=total, resumed=True)


def test_open_loop_shows_a_stall_that_the_closed_loop_hides(tmp_path: Path) -> None:
    src = tmp_path / "in.ndjson"
    write_input(src, 150, seed=5)

    def run(name: str, *extra: str) -> tuple[HdrHistogram, dict[str, Any]]:
        with SandboxServer("agiled") as sb, HostileProxy(sb.base_url, seed=1, rates={}) as px:
            hold = px.hold_after(30)  # the server stalls ~1 s at its 30th request

            def stall() -> None:
                if hold.reached.wait(60):
                    time.sleep(1.0)
                hold.release()

            staller = threading.Thread(target=stall, daemon=True)
            staller.start()
            out = tmp_path / name
            done = cli(upload_args(sb, src, out, "--concurrency", "1", *extra, via=px), sb.env)
            staller.join()
            assert done.returncode == 0, done.stderr
        return _combined(out), summary(out)

    closed, closed_s = run("closed")
    opened, open_s = run("open", "--arrival-rate", "100")
    # closed loop: the one stalled request is the max, but p99 does not see it (the load waited)
    assert closed.get_max_value() >= 1_000_000
    assert closed.get_value_at_percentile(99) < 1_000_000
    assert closed_s["late_starts"] == 0
    # open loop: the records due during the stall count from their due time
    assert opened.get_value_at_percentile(99) >= 900_000
    assert opened.get_value_at_percentile(99) > closed.get_value_at_percentile(99)
    assert open_s["late_starts"] > 0 and open_s["arrival_rate"] == 100
    assert opened.get_total_count() == open_s["requests"]


def test_thresholds_decide_the_exit_code(tmp_path: Path) -> None:
    src = tmp_path / "in.ndjson"
    write_input(src, 10, seed=2)
    with SandboxServer("agiled") as sb:
        met = cli(upload_args(sb, src, tmp_path / "met", "--threshold", "write.p99<100000ms",
                              "--threshold", "errors<1%", "--threshold", "rate>=0.001/s"), sb.env)
        assert met.returncode == 0, met.stderr
        assert [t["met"] for t in summary(tmp_path / "met")["thresholds"]] == [True, True, True]
        assert "threshold write.p99<100000ms: met" in met.stderr

        missed = cli(upload_args(sb, src, tmp_path / "missed", "--threshold", "write.p50<0.001ms",
                                 "--threshold", "errors<=0"), sb.env)
        assert missed.returncode == 4, missed.stderr
        got = summary(tmp_path / "missed")["thresholds"]
        assert [(t["expr"], t["met"]) for t in got] == [("write.p50<0.001ms", False), ("errors<=0", True)]
        assert "threshold write.p50<0.001ms: NOT MET" in missed.stderr

        bad = cli(upload_args(sb, src, tmp_path / "bad", "--threshold", "write.p77<3ms"), sb.env)
        assert bad.returncode == 2
        assert "write.p77<3ms" in bad.stderr and "accepted forms" in bad.stderr
        assert not (tmp_path / "bad").exists()  # nothing started
        assert sb.state()["invoices"] and len(sb.state()["invoices"]) == 10


@pytest.mark.parametrize("text", ["write.p99", "rate>5", "errors<5ms", "write.p99<5/s", "bogus<1", "write.p99<<5"])
def test_bad_threshold_expressions_are_refused(text: str) -> None:
    with pytest.raises(Exception, match="accepted forms"):
        parse_threshold(text)


def test_metrics_endpoint_answers_during_a_run(tmp_path: Path) -> None:
    src = tmp_path / "in.ndjson"
    write_input(src, 20, seed=4)
    with SandboxServer("agiled") as sb, HostileProxy(sb.base_url, seed=1, rates={}) as px:
        gate = px.gate(lambda method, path, body: method == "POST" and path.endswith("/invoices"))
        proc = start_cli(upload_args(sb, src, tmp_path / "run", "--metrics-port", "0", via=px), sb.env)
        try:
            assert proc.stderr is not None
            url = None
            for line in proc.stderr:
                if m := re.search(r"metrics at (http://127\.0\.0\.1:\d+/metrics)", line):
                    url = m.group(1)
                    break
            assert url, "no metrics line"
            assert gate.reached.wait(60)  # the run is held at its first invoice create

            def scrape() -> str:
                with urllib.request.urlopen(url, timeout=10) as resp:
                    return resp.read().decode()

            wait_until(lambda: 'bulk_requests_total{kind="read",status="200"}' in scrape(), timeout=30,
                       what="the run's reads in /metrics")
            body = scrape()
            assert "bulk_request_duration_seconds_bucket" in body
            assert proc.poll() is None  # mid-run
            gate.drop()  # the held creates are cut off (reset), retried and go through
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
        finally:
            stop(proc)
    s = summary(tmp_path / "run")
    _assert_consistent(s)
    assert s["status_codes"]["write"].get("reset", 0) >= 1  # the cut-off creates, counted by name
    assert s["latency_ms"]["invoice"]["count"] >= 20


def test_upload_processes_and_shards_ship_their_histograms(tmp_path: Path) -> None:
    src = tmp_path / "in.ndjson"
    write_input(src, 40, seed=6)
    with SandboxServer("agiled") as sb:
        fan = tmp_path / "fan"
        done = cli(upload_args(sb, src, fan, "--processes", "2"), sb.env)
        assert done.returncode == 0, done.stderr
        s = summary(fan)
        assert s["processes"] == 2
        _assert_consistent(s)
        assert s["latency_ms"]["invoice"]["count"] == 40
        _assert_timeline_sums(fan, s)
    with SandboxServer("agiled") as sb:
        shards = [tmp_path / f"shard{k}" for k in range(2)]
        for k, out in enumerate(shards):
            assert cli(upload_args(sb, src, out, "--shard", f"{k}/2"), sb.env).returncode == 0
        merged = tmp_path / "merged"
        done = cli(["merge", *map(str, shards), "--out", str(merged)], sb.env)
        assert done.returncode == 0, done.stderr
    m = summary(merged)
    parts = [summary(out) for out in shards]
    assert m["latency_ms"]["invoice"]["count"] == 40
    assert m["requests"] == sum(p["requests"] for p in parts)
    _assert_consistent(m)
    assert _combined(merged).get_total_count() == m["requests"]


def test_mid_run_summary_latency_is_cached_and_the_final_one_fresh() -> None:
    """A checkpoint's summary (ended_at null) reuses percentiles up to LATENCY_REFRESH_S old;
    an ended run's summary always counts every request."""
    from bulk.measure import Measure
    m = Measure()
    m.latency.record("write", "invoice", 1000, 200)
    mid: dict[str, Any] = {"ended_at": None}
    m.add_to(mid)
    assert mid["latency_ms"]["write"]["count"] == 1
    m.latency.record("write", "invoice", 2000, 200)
    m.add_to(mid)
    assert mid["latency_ms"]["write"]["count"] == 1  # cached: a second later, not recomputed
    final: dict[str, Any] = {"ended_at": "2026-12-01T00:00:00Z"}
    m.add_to(final)
    assert final["latency_ms"]["write"]["count"] == 2
    assert final["status_codes"]["write"] == {"200": 2}
