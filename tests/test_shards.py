"""Scale-out: N shards of one input, run side by side and merged, equal one unsharded run."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from harness import (
    SandboxServer,
    assert_exactly_once,
    cli,
    read_id_map,
    read_reasons,
    start_cli,
    summary,
    upload_args,
    write_input,
)

from bulk.config import Shard, UploadConfig

N = 3
BAD_LINES = [
    b'{"external_id": "BAD-1", "customer": ',  # cut short
    b'{"external_id":"BAD-2","customer":{"external_id":"C-9","email":"not-an-email"},"currency":"EUR",'
    b'"lines":[{"title":"x","quantity":1,"unit_price":"1","tax_rate":"0"}]}',
    b'{"external_id":"BAD-3","customer":{"external_id":"C-9","email":"c9@example.com"},"currency":"XXX",'
    b'"lines":[{"title":"x","quantity":1,"unit_price":"1","tax_rate":"0"}]}',
    b"[1, 2, 3]",
]


def _outcome(out: Path) -> tuple[Counter[tuple[str, ...]], Counter[bytes]]:
    """What was rejected: (line, external id, kind, field, message) rows, and the verbatim lines."""
    fields = ("line", "external_id", "kind", "field", "message")
    reasons = Counter(tuple(r[k] for k in fields) for r in read_reasons(out))
    return reasons, Counter((out / "failed.ndjson").read_bytes().splitlines())


def test_n_shards_merged_equal_one_unsharded_run(tmp_path: Path) -> None:
    src = tmp_path / "in.ndjson"
    write_input(src, 240, seed=5)
    first_line = src.read_bytes().splitlines()[0]
    extra = [*BAD_LINES, first_line]  # and a duplicate external id: rejected, the first one stands
    parsed = write_input(src, 240, seed=5, extra_lines=extra)
    records = [r for r in parsed if r.line_no != len(parsed) + len(BAD_LINES)]  # not the duplicate line
    assert len(records) == 240

    with SandboxServer("agiled") as sb:
        procs = [start_cli(upload_args(sb, src, tmp_path / f"shard{k}", "--shard", f"{k}/{N}"), sb.env)
                 for k in range(N)]
        for p in procs:
            _, err = p.communicate(timeout=120)
            assert p.returncode == 1, err  # 1: finished, with the rejected lines
        merged = tmp_path / "merged"
        done = cli(["merge", *(str(tmp_path / f"shard{k}") for k in range(N)), "--out", str(merged)], sb.env)
        assert done.returncode == 1, done.stderr
        assert_exactly_once(sb, merged, records)  # each record created once, ID map = server, exact totals
        sharded_numbers = sorted(inv["invoice_number"] for inv in sb.state()["invoices"])

    with SandboxServer("agiled") as sb:
        single = tmp_path / "single"
        done = cli(upload_args(sb, src, single), sb.env)
        assert done.returncode == 1, done.stderr
        single_numbers = sorted(inv["invoice_number"] for inv in sb.state()["invoices"])

    assert sharded_numbers == single_numbers
    m, s = summary(merged), summary(single)
    for key in ("read", "created", "existing", "rejected", "failed", "uncertain"):
        assert m["records"][key] == s["records"][key], key
    assert m["records"]["rejected"] == len(extra)
    assert m["totals"] == s["totals"]
    assert Counter(r["external_id"] for r in read_id_map(merged)) == \
        Counter(r["external_id"] for r in read_id_map(single))
    assert _outcome(merged) == _outcome(single)
    shards = {e["shard"]: e for e in m["shards"]}
    assert sorted(shards) == [f"{k}/{N}" for k in range(N)]
    assert all(e["created"] > 0 for e in shards.values())  # the hash spreads the records
    assert sum(e["read"] for e in shards.values()) == m["records"]["read"]
    assert m["requests"] == sum(summary(tmp_path / f"shard{k}")["requests"] for k in range(N))
    parts = [summary(tmp_path / f"shard{k}") for k in range(N)]
    assert m["version"] == parts[0]["version"]
    assert m["started_at"] == min(p["started_at"] for p in parts)  # ISO 8601 UTC: order by text
    assert m["ended_at"] == max(p["ended_at"] for p in parts) and m["started_at"] <= m["ended_at"]


def test_merge_refuses_what_is_not_one_complete_job(tmp_path: Path) -> None:
    src, other = tmp_path / "in.ndjson", tmp_path / "other.ndjson"
    write_input(src, 30, seed=1)
    write_input(other, 30, seed=2)
    with SandboxServer("agiled") as sb:
        for k in range(2):
            assert cli(upload_args(sb, src, tmp_path / f"s{k}", "--shard", f"{k}/2"), sb.env).returncode == 0
        assert cli(upload_args(sb, src, tmp_path / "plain"), sb.env).returncode == 0
    with SandboxServer("agiled") as sb:  # another input: its own API account
        assert cli(upload_args(sb, other, tmp_path / "o1", "--shard", "1/2"), sb.env).returncode == 0

    def merge(*dirs: str) -> tuple[int, str]:
        done = cli(["merge", *(str(tmp_path / d) for d in dirs), "--out", str(tmp_path / "m")], {})
        return done.returncode, done.stderr

    code, err = merge("s0")
    assert code == 2 and "shard 1/2 missing" in err
    code, err = merge("s0", "o1")
    assert code == 2 and "different input files" in err
    code, err = merge("s0", "s0")
    assert code == 2 and "given twice" in err
    code, err = merge("s0", "plain")
    assert code == 2 and "not run with --shard" in err
    assert not (tmp_path / "m" / "summary.json").exists()
    code, err = merge("s1", "s0")
    assert code == 0, err
    assert summary(tmp_path / "m")["records"]["created"] == 30
    with open(tmp_path / "s1" / "id_map.csv", "ab") as f:  # a finished shard changed afterwards
        f.write(b"INV-X,1,99,,draft,EUR,1.00,0.00,1.00\n")
    code, err = merge("s1", "s0")
    assert code == 2 and "changed after its run" in err, err


@pytest.mark.parametrize(("rate", "limits", "documented", "want"), [
    (None, {}, {"write": 0.5, "read": 1.0}, {"write": 0.5 / 3, "read": 1.0 / 3}),
    (30.0, {}, {"write": 0.5}, {"*": 10.0}),
    (None, {"write": 6.0}, {"write": 0.5, "read": 1.0}, {"write": 2.0, "read": 1.0 / 3}),
])
def test_a_shard_takes_its_share_of_the_rate_budget(rate: float | None, limits: dict[str, float],
                                                    documented: dict[str, float], want: dict[str, float]) -> None:
    config = UploadConfig(input="x.ndjson", out=Path("runs/x"), rate=rate, limits=limits, shard=Shard(1, 3))
    assert config.pacing_limits(documented) == pytest.approx(want)
    unsharded = UploadConfig(input="x.ndjson", out=Path("runs/x"), rate=rate, limits=limits)
    assert unsharded.pacing_limits(documented) == pytest.approx({k: v * 3 for k, v in want.items()})
