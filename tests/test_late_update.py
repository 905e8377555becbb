"""A killed run's ``--on-existing update`` request delivered late, while the same command runs
again: the server ends holding the corrected data exactly once, audited at the server.

An export is uploaded; a corrected export goes with ``--on-existing update`` through
tests/late_proxy.py, which holds the run's first update request (the target's PUT/PATCH, or
anny's item POST that follows its PATCH and DELETEs) and never answers it; the run is killed
while it waits (progress, not time). The same command then runs again. When its own update
request of that invoice arrives, the proxy forwards it, then delivers the dead run's held one
(a request stuck in a network landing after its successor), and only then answers the new
one. The audit, from the sandbox's state and the corrected input alone: one invoice per
external id, none created, each holding exactly the corrected lines (as a multiset, so an
item added twice shows), and the ID map one row per record.
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from harness import (
    SandboxServer,
    ScriptedServer,
    cli,
    kill_when,
    read_id_map,
    read_reasons,
    summary,
    support,
    upload_args,
)
from late_proxy import LateProxy

from bulk.generate import generate

N, CORRECTED = 6, (1, 4)
#: the first request of an invoice update, per target (the one the proxy holds)
UPDATE = {"agiled": ("PUT", "/public/v1/invoices/"), "chargeover": ("PUT", "/api/v3/invoice/"),
          "coperniq": ("PATCH", "/invoices/"), "anny": ("POST", "/api/v1/items")}
MORE = {"anny": ["--option", "settle=0.2"]}  # the held request outlasts any settle window anyway


def _docs() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    docs = [json.loads(line) for line in generate(N, seed=1501)]
    for d in docs:
        d["status"] = "draft"  # an invoice every API lets us change
    return docs, _corrected(docs, Decimal("1.25"))


def _corrected(docs: list[dict[str, Any]], by: Decimal) -> list[dict[str, Any]]:
    fixed = copy.deepcopy(docs)
    for n, i in enumerate(CORRECTED):
        first = fixed[i]["lines"][0]
        first["unit_price"] = str(Decimal(str(first["unit_price"])) + by)
        if n % 2:
            fixed[i]["lines"].append({**copy.deepcopy(first), "title": f"Correction {i}", "quantity": 2})
    return fixed


def _write(path: Path, docs: list[dict[str, Any]]) -> None:
    path.write_bytes(b"".join(json.dumps(d).encode() + b"\n" for d in docs))


@pytest.mark.parametrize("target", sorted(UPDATE))
def test_a_late_old_update_leaves_the_corrected_data_once(target: str, tmp_path: Path) -> None:
    docs, fixed = _docs()
    first, second = tmp_path / "first.ndjson", tmp_path / "second.ndjson"
    _write(first, docs)
    _write(second, fixed)
    method, prefix = UPDATE[target]
    s = support(target)
    with SandboxServer(target) as sb:
        done = cli(upload_args(sb, first, tmp_path / "run1", *MORE.get(target, [])), sb.env)
        assert done.returncode == 0, done.stderr
        made = {inv["external_id"]: inv["id"] for inv in s.audited(sb.state())}
        proxy = LateProxy(sb.base_url, hold=lambda m, p, _: m == method and p.startswith(prefix), release="resend")
        with ScriptedServer(proxy.respond) as front, contextlib.closing(proxy):
            args = [a if a != sb.base_url else front.base_url
                    for a in upload_args(sb, second, tmp_path / "run2", "--on-existing", "update",
                                         "--concurrency", "1", "--checkpoint-every", "0.02", *MORE.get(target, []))]
            kill_when(sb, args, proxy.holding.is_set, what="an update held at the proxy")
            assert proxy.held_answer is None  # not delivered yet: it lands during the next run
            again = cli(args, sb.env)
            assert proxy.held_answer is not None, "the held update was never delivered: the test proves nothing"
            late_status = proxy.held_answer[0]
        state = sb.state()
    assert again.returncode == 0, (late_status, read_reasons(tmp_path / "run2"), again.stderr)
    audited = s.audited(state)
    assert Counter(inv["external_id"] for inv in audited) == Counter(d["external_id"] for d in fixed)
    assert {inv["external_id"]: inv["id"] for inv in audited} == made, "an invoice was created, not updated"
    for inv, doc in zip(sorted(audited, key=lambda i: i["external_id"]),
                        sorted(fixed, key=lambda d: d["external_id"]), strict=True):
        assert Counter(inv["items"]) == Counter(s.record_items(doc)), (doc["external_id"], late_status, inv["items"])
    rows = read_id_map(tmp_path / "run2")
    assert Counter(r["external_id"] for r in rows) == Counter(d["external_id"] for d in fixed)
    assert {r["invoice_id"] for r in rows} == set(made.values())
    assert not read_reasons(tmp_path / "run2")
    r = summary(tmp_path / "run2")["records"]
    assert (r["failed"], r["uncertain"], r["rejected"], r["read"]) == (0, 0, 0, N), r


@pytest.mark.parametrize("target", sorted(UPDATE))
def test_a_late_update_of_an_older_correction_is_never_reported_as_the_newer(target: str, tmp_path: Path) -> None:
    """The killed run carried correction A; the user corrects again (B, a new run directory)
    and runs ``--on-existing update``; A's update lands right after B's own, before B's answer.
    No client can stop a late write from landing, but bulk must never report B ``updated``
    while the server holds A: either every invoice holds B when the run ends, or the record
    fails ("upload failed.ndjson again with --on-existing update") and the same command run again leaves B."""
    docs, fixed = _docs()
    newer = _corrected(docs, Decimal("2.50"))
    paths = [tmp_path / f"{name}.ndjson" for name in ("first", "a", "b")]
    for path, content in zip(paths, (docs, fixed, newer), strict=True):
        _write(path, content)
    method, prefix = UPDATE[target]
    s = support(target)
    more = MORE.get(target, [])
    with SandboxServer(target) as sb:
        assert cli(upload_args(sb, paths[0], tmp_path / "run1", *more), sb.env).returncode == 0
        proxy = LateProxy(sb.base_url, hold=lambda m, p, _: m == method and p.startswith(prefix), release="resend")
        with ScriptedServer(proxy.respond) as front, contextlib.closing(proxy):
            def command(src: Path, out: str) -> list[str]:
                return [a if a != sb.base_url else front.base_url
                        for a in upload_args(sb, src, tmp_path / out, "--on-existing", "update", "--concurrency", "1",
                                             "--checkpoint-every", "0.02", *more)]

            kill_when(sb, command(paths[1], "run2"), proxy.holding.is_set, what="an update held at the proxy")
            runs = [cli(command(paths[2], "run3"), sb.env)]
            assert proxy.held_answer is not None, "the held update was never delivered: the test proves nothing"
            at_end = {inv["external_id"]: Counter(inv["items"]) for inv in s.audited(sb.state())}
            if runs[0].returncode != 0:  # detected: the failed records go again (README: fix and re-feed)
                runs.append(cli(command(tmp_path / "run3" / "failed.ndjson", "run4"), sb.env))
            state = sb.state()
    want = {d["external_id"]: Counter(s.record_items(d)) for d in newer}
    if runs[0].returncode == 0:
        stale = sorted(ext for ext in want if at_end[ext] != want[ext])
        assert not stale, f"the run ended 0 but the server holds the older correction for {stale}"
    else:
        reasons = read_reasons(tmp_path / "run3")
        retry = "upload failed.ndjson again with --on-existing update"
        assert reasons and all(r["stage"] == "update" and retry in r["message"] for r in reasons), reasons
    assert runs[-1].returncode == 0, runs[-1].stderr
    assert {inv["external_id"]: Counter(inv["items"]) for inv in s.audited(state)} == want
