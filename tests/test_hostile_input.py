"""The hostile corpus end to end, per target: upload fixtures/hostile.ndjson through the CLI.

Every bad line is rejected with its line number, field and reason (failed_reasons.csv) and
copied verbatim to failed.ndjson; every valid line is created exactly once; the summary counts
each; then failed.ndjson is fixed programmatically and fed back with a new --out, which
finishes the job. Parse-level expectations per line are in tests/test_records.py; this file
checks that the pipeline keeps them, and one more hostile case that only the pipeline sees: a
multi-megabyte line, rejected in bounded memory and copied to failed.ndjson from the input.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from harness import (
    REPO,
    SandboxServer,
    assert_exactly_once,
    assert_outputs_whole,
    cli,
    cli_with,
    read_id_map,
    read_reasons,
    summary,
    support,
    upload_args,
    write_input,
)

import bulk.targets
from bulk.errors import InvalidRecord
from bulk.records import Record, parse_record
from bulk.targets import get_target

TARGETS = bulk.targets.names()  # the registered targets (entry points included)
FIXTURES = REPO / "fixtures"
CORPUS = (FIXTURES / "hostile.ndjson").read_bytes()
EXPECTED: dict[str, dict[str, Any]] = json.loads((FIXTURES / "hostile_expected.json").read_text("utf-8"))
LINES = CORPUS.split(b"\n")


def _make_hostile() -> Any:
    spec = importlib.util.spec_from_file_location("make_hostile", FIXTURES / "make_hostile.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _expected(target: str) -> tuple[dict[int, str], list[Record]]:
    """(line -> field of each rejected line, the valid records) for ``target``: the corpus's
    parse-level expectations plus what this target's own check() refuses before sending."""
    adapter = get_target(target)(base_url="", credentials={}, options=dict(_options(target)))
    rejected: dict[int, str] = {}
    valid: list[Record] = []
    for key, want in EXPECTED.items():
        line = int(key)
        if want["outcome"] != "ok":
            rejected[line] = want["field"]
            continue
        record = parse_record(LINES[line - 1], line)
        try:
            adapter.check(record)
        except InvalidRecord as exc:
            rejected[line] = exc.field
        else:
            valid.append(record)
    return rejected, valid


def _options(target: str) -> list[tuple[str, str]]:
    args = support(target).EXTRA_ARGS
    return [tuple(args[i + 1].split("=", 1)) for i, a in enumerate(args) if a == "--option"]  # type: ignore[misc]


# --- fixing failed.ndjson ---------------------------------------------------------------------------------------

_STEP = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def _path(field: str) -> list[str | int]:
    return [name if name else int(index) for name, index in _STEP.findall(field)]


def _template_value(template: dict[str, Any], path: list[str | int]) -> Any:
    node: Any = template
    for step in path:
        # lines[1] is fixed like lines[0]
        node = node[min(step, len(node) - 1)] if isinstance(step, int) else node[step]
    return node


def _fix(raw: bytes, reason: dict[str, str], make: Any) -> bytes:
    """What a user would do with one failed line: correct the named field, or rewrite the line."""
    line = reason["line"]
    try:
        doc = json.loads(raw.decode("utf-8"))  # Python's json takes NaN / 1e999999: the field is replaced anyway
    except (UnicodeDecodeError, ValueError):
        doc = None
    field = reason["field"]
    if not isinstance(doc, dict) or field == "(line)":
        return orjson.dumps(make._valid(f"FIXED-{line}"))
    if field == "external_id":
        doc["external_id"] = f"FIXED-{line}"  # a bad id, or a duplicate of an earlier line
    else:
        path = _path(field)
        node: Any = doc
        for step in path[:-1]:
            if isinstance(step, int) or not isinstance(node.get(step), (dict, list)):
                break
            node = node[step]
        else:
            last = path[-1]
            if isinstance(last, str) or (isinstance(node, list) and last < len(node)):
                node[last] = _template_value(make._valid("x"), path)
                return json.dumps(doc, ensure_ascii=False).encode()
        top = path[0]
        assert isinstance(top, str)
        doc[top] = _template_value(make._valid("x"), [top])
    return json.dumps(doc, ensure_ascii=False).encode()


@pytest.mark.parametrize("target", TARGETS)
def test_hostile_corpus_rejects_each_bad_line_creates_the_rest_and_the_fix_finishes(target: str,
                                                                                    tmp_path: Path) -> None:
    src, out, fixed_out = tmp_path / "hostile.ndjson", tmp_path / "run", tmp_path / "run-fixed"
    src.write_bytes(CORPUS)
    rejected, valid = _expected(target)
    with SandboxServer(target) as sb:
        done = cli(upload_args(sb, src, out, "--concurrency", "4"), sb.env)
        assert done.returncode == 1, done.stderr
        assert_exactly_once(sb, out, valid)

        reasons = read_reasons(out)
        assert [r["kind"] for r in reasons if r["kind"] != "rejected"] == [], \
            f"valid lines the API refused (the target should reject them up front): {reasons}"
        got = {int(r["line"]): r["field"] for r in reasons}
        assert got == rejected
        for r in reasons:
            # the message itself: its line and field are in their own columns (issue 14)
            assert r["stage"] == "parse" and r["message"] and not r["message"].startswith("line "), r
            assert len(r["message"]) < 300, r
        # failed.ndjson: each rejected line verbatim (CR, BOM, Latin-1 bytes and all), in the
        # order of failed_reasons.csv, one per line.
        failed = (out / "failed.ndjson").read_bytes().split(b"\n")
        assert failed[-1] == b""
        assert failed[:-1] == [LINES[int(r["line"]) - 1] for r in reasons]
        s = summary(out)["records"]
        assert (s["read"], s["created"], s["rejected"], s["failed"], s["uncertain"]) == \
            (len(valid) + len(rejected), len(valid), len(rejected), 0, 0), s
        assert_outputs_whole(out)

        # Fix failed.ndjson and feed it back with a new --out: the job is finished.
        make = _make_hostile()
        fixed = [_fix(raw, reason, make) for raw, reason in zip(failed[:-1], reasons, strict=True)]
        fixed_src = tmp_path / "fixed.ndjson"
        fixed_src.write_bytes(b"\n".join(fixed) + b"\n")
        again = cli(upload_args(sb, fixed_src, fixed_out, "--concurrency", "4"), sb.env)
        assert again.returncode == 0, again.stderr + (fixed_out / "failed_reasons.csv").read_text()
        fixed_records = [parse_record(line, i) for i, line in enumerate(fixed, 1)]

        every = valid + fixed_records
        invoices = support(target).invoices(sb.state())
        counts = Counter(inv["external_id"] for inv in invoices)
        assert counts == Counter({r.external_id: 1 for r in every}), "not exactly once after the fix"
        id_rows = read_id_map(out) + read_id_map(fixed_out)
        assert {r["external_id"]: r["invoice_id"] for r in id_rows} == \
            {inv["external_id"]: str(inv["id"]) for inv in invoices}
        assert len(id_rows) == len(every)
    assert summary(fixed_out)["records"]["created"] == len(rejected)


# --- a multi-megabyte line -------------------------------------------------------------------------------------


_PEAK = ("print('PEAK-RSS-KIB', [row.split()[1] for row in open('/proc/self/status') if row.startswith('VmHWM:')][0],"
         " file=sys.stderr)")


def _peak_rss_kib(args: list[str], env: dict[str, str]) -> tuple[int, int, str]:
    """Run the CLI; its exit code, its peak RSS in KiB (VmHWM, measured in the child itself:
    wait4's ru_maxrss would count the test process's pages from before the exec) and stderr."""
    done = cli_with("", args, env, epilogue=_PEAK)
    peak = re.search(r"PEAK-RSS-KIB (\d+)", done.stderr)
    assert peak is not None, done.stderr
    return done.returncode, int(peak.group(1)), done.stderr


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="peak memory is read from /proc")
def test_multi_megabyte_line_is_rejected_in_bounded_memory_and_copied_verbatim(tmp_path: Path) -> None:
    small, big = tmp_path / "small.ndjson", tmp_path / "big.ndjson"
    records = write_input(small, 6, seed=401)
    lines = small.read_bytes().splitlines(keepends=True)
    doc = json.loads(lines[2])
    doc["external_id"], doc["notes"] = "INV-HUGE", "x" * (48 << 20)  # valid but for its size
    huge = json.dumps(doc, ensure_ascii=False).encode()
    size, digest = len(huge), hashlib.sha256(huge).hexdigest()
    big.write_bytes(b"".join(lines[:3]) + huge + b"\n" + b"".join(lines[3:]))
    del huge, doc

    with SandboxServer("agiled") as sb:
        code, base_rss, err = _peak_rss_kib(upload_args(sb, small, tmp_path / "run-small"), sb.env)
        assert code == 0, err
        code, rss, err = _peak_rss_kib(upload_args(sb, big, tmp_path / "run-big"), sb.env)
        assert code == 1, err
        assert_exactly_once(sb, tmp_path / "run-big", records)
    out = tmp_path / "run-big"
    assert rss - base_rss < 24 << 10, f"peak RSS grew by {(rss - base_rss) >> 10} MiB for a {size >> 20} MiB line"
    [reason] = read_reasons(out)
    assert (reason["line"], reason["field"], reason["kind"]) == ("4", "(line)", "rejected"), reason
    assert "over the" in reason["message"] and "--max-line-bytes" in reason["message"], reason
    assert os.path.getsize(out / "failed.ndjson") == size + 1
    h = hashlib.sha256()
    with open(out / "failed.ndjson", "rb") as f:
        left = size
        while left:
            chunk = f.read(min(left, 1 << 20))
            h.update(chunk)
            left -= len(chunk)
        assert f.read() == b"\n"
    assert h.hexdigest() == digest, "failed.ndjson does not hold the line verbatim"
    s = summary(out)["records"]
    assert (s["created"], s["rejected"]) == (len(records), 1)
    with open(out / "failed_reasons.csv", newline="") as f:
        assert len(list(csv.reader(f))) == 2
