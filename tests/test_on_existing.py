"""``--on-existing fail|skip|update``, through the CLI against each target's sandbox.

An export is uploaded; 5 of its 10 invoices are corrected (a unit price, a line added, a due
date); the corrected export goes again, in a NEW run directory, against the same sandbox.
``update`` changes exactly the corrected invoices (checked at the server, line by line),
creates none and counts them; ``skip`` leaves them; ``fail`` reports every one with the API
id and the flag. A run killed while its updates wait at the proxy finishes them when the same
command runs again. (Coperniq's update traffic is validated against its OpenAPI document in
tests/test_coperniq.py, which loads the document once.)
"""

from __future__ import annotations

import copy
import csv
import json
import signal
import urllib.error
import urllib.request
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from harness import (
    SandboxServer,
    cli,
    expected_totals,
    in_flight,
    read_id_map,
    read_reasons,
    start_cli,
    stop,
    summary,
    support,
    upload_args,
    wait_until,
)
from hostile_proxy import HostileProxy

from bulk.generate import generate
from bulk.outputs import ID_MAP_HEADER, Outputs
from bulk.records import parse_record
from bulk.targets import get_target

#: targets whose update endpoint bulk drives (the others: see README, "correct and re-run")
UPDATING = ["agiled", "anny", "chargeover", "coperniq"]
#: the PUT/PATCH that carries an invoice update, per target (for the kill test's gate)
UPDATE_REQUEST = {"agiled": ("PUT", "/public/v1/invoices/"), "chargeover": ("PUT", "/api/v3/invoice/"),
                  "coperniq": ("PATCH", "/invoices/"),
                  "anny": ("POST", "/api/v1/items")}  # anny: the items added after the PATCH and DELETEs
N, CORRECTED = 10, (1, 3, 4, 7, 9)


def _docs(seed: int) -> list[dict[str, Any]]:
    docs = [json.loads(line) for line in generate(N, seed=seed)]
    for d in docs:
        d["status"] = "draft"  # an invoice the APIs let us change
    return docs


def _corrected(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = copy.deepcopy(docs)
    for n, i in enumerate(i for i in CORRECTED if i < len(out)):
        d = out[i]
        first = d["lines"][0]
        first["unit_price"] = str(Decimal(str(first["unit_price"])) + Decimal("1.25"))  # an amount
        if n % 2:
            d["lines"].append({**copy.deepcopy(first), "title": f"Correction {i}", "quantity": 2})  # a line
        if d.get("due_date"):
            d["due_date"] = d["due_date"][:8] + "28"  # a due date
    return out


def _write(path: Path, docs: list[dict[str, Any]]) -> None:
    path.write_bytes(b"".join(json.dumps(d).encode() + b"\n" for d in docs))


class _Exports(NamedTuple):
    """An export and its corrected version, as files: what every correct-and-re-run scenario feeds."""

    first: Path  # the export as uploaded first
    second: Path  # the corrected export
    fixed: list[dict[str, Any]]  # its documents
    corrected: set[str]  # the external ids of the invoices it corrects


def _exports(tmp_path: Path, docs: list[dict[str, Any]]) -> _Exports:
    fixed = _corrected(docs)
    first, second = tmp_path / "first.ndjson", tmp_path / "second.ndjson"
    _write(first, docs)
    _write(second, fixed)
    return _Exports(first, second, fixed, {d["external_id"] for i, d in enumerate(docs) if i in CORRECTED})


def _records(docs: list[dict[str, Any]]) -> list[Any]:
    return [parse_record(json.dumps(d).encode(), i) for i, d in enumerate(docs, 1)]


def _at_server(target: str, sb: SandboxServer) -> dict[str, dict[str, Any]]:
    """Each invoice at the server by external id: the audit's view, plus its due date where the
    target maps one (Agiled)."""
    state = sb.state()
    found = {inv["external_id"]: inv for inv in support(target).audited(state)}
    if target == "agiled":
        for raw in state["invoices"]:
            found[raw["invoice_number"]]["due_date"] = raw["due_date"]
    if target == "anny":
        for raw in state["invoices"]:
            found[raw["number"]]["due_date"] = raw["due_date"]
    if target == "coperniq":
        for raw in state["invoices"]:
            due = raw.get("dueDate")
            found[raw["description"].split("\n", 1)[0]]["due_date"] = due[:10] if due else None
    return found


def _assert_matches(target: str, server: dict[str, dict[str, Any]], docs: list[dict[str, Any]]) -> None:
    s = support(target)
    for d in docs:
        inv = server[d["external_id"]]
        assert sorted(inv["items"], key=repr) == sorted(s.record_items(d), key=repr), (d["external_id"], inv["items"])
        if "due_date" in inv:
            assert inv["due_date"] == d.get("due_date"), d["external_id"]


def _actions(out: Path) -> dict[str, str]:
    return {row["external_id"]: row["action"] for row in read_id_map(out)}


def _assert_updated(target: str, after: dict[str, dict[str, Any]], ex: _Exports, run: Path,
                    stderr: str) -> dict[str, Any]:
    """What an ``--on-existing update`` run of the corrected export leaves (``after``: the
    server's invoices then): every invoice as corrected, in ``run``'s ID map ``updated`` if it
    was corrected and ``unchanged`` if not, none created or failed, the totals at the corrected
    amounts, the counts said on stderr. Returns the run's summary."""
    _assert_matches(target, after, ex.fixed)
    assert _actions(run) == {d["external_id"]: "updated" if d["external_id"] in ex.corrected else "unchanged"
                             for d in ex.fixed}
    s = summary(run)
    r = s["records"]
    assert (r["created"], r["updated"], r["unchanged"], r["failed"]) == (0, len(CORRECTED), N - len(CORRECTED), 0), r
    assert s["totals"] == expected_totals(_records(ex.fixed))  # every ID map row, at the corrected amounts
    assert f"{len(CORRECTED)} updated, {N - len(CORRECTED)} unchanged" in stderr
    return s


@pytest.fixture(params=UPDATING)
def target(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_correct_and_rerun(target: str, tmp_path: Path) -> None:
    docs = _docs(seed=1301)
    ex = _exports(tmp_path, docs)
    first, second, corrected = ex.first, ex.second, ex.corrected
    with SandboxServer(target) as sb:
        done = cli(upload_args(sb, first, tmp_path / "run1"), sb.env)
        assert done.returncode == 0, done.stderr
        before = _at_server(target, sb)
        assert len(before) == N

        # fail: every invoice that exists is reported, nothing is written
        failing = cli(upload_args(sb, second, tmp_path / "run-fail", "--on-existing", "fail"), sb.env)
        assert failing.returncode == 1, failing.stderr
        reasons = read_reasons(tmp_path / "run-fail")
        assert {r["external_id"] for r in reasons} == {d["external_id"] for d in docs}
        for r in reasons:
            assert r["kind"] == "failed" and r["stage"] == "existing", r
            assert before[r["external_id"]]["id"] in r["message"] and "--on-existing update" in r["message"], r
        assert _at_server(target, sb) == before

        # skip: left as they are, named in the ID map as existing
        skipping = cli(upload_args(sb, second, tmp_path / "run-skip", "--on-existing", "skip"), sb.env)
        assert skipping.returncode == 0, skipping.stderr
        skipped = _actions(tmp_path / "run-skip")
        # Agiled replays an identical create's stored answer (its idempotency key): under skip
        # nothing is looked up first, so those read as created (bulk.targets.agiled_existing).
        same = "created" if target == "agiled" else "existing"
        assert skipped == {d["external_id"]: "existing" if d["external_id"] in corrected else same for d in docs}
        assert _at_server(target, sb) == before
        r = summary(tmp_path / "run-skip")["records"]
        assert r["existing"] == (len(CORRECTED) if target == "agiled" else N) and r["created"] == N, r

        # update: exactly the corrected invoices change, none is created
        updating = cli(upload_args(sb, second, tmp_path / "run2", "--on-existing", "update"), sb.env)
        assert updating.returncode == 0, updating.stderr
        after = _at_server(target, sb)
    assert set(after) == set(before) and {k: v["id"] for k, v in after.items()} == {k: v["id"] for k, v in
                                                                                   before.items()}
    for ext, inv in after.items():
        if ext not in corrected:
            assert inv == before[ext], ext  # untouched, field by field
    _assert_updated(target, after, ex, tmp_path / "run2", updating.stderr)


def test_killed_during_updates_then_the_same_command_finishes_them(target: str, tmp_path: Path) -> None:
    docs = _docs(seed=1302)
    first, second, fixed, corrected = _exports(tmp_path, docs)
    method, prefix = UPDATE_REQUEST[target]
    passed: list[str] = []

    def third_update_on(m: str, path: str, body: bytes) -> bool:
        if m != method or not path.startswith(prefix):
            return False
        if len(passed) < 2:
            passed.append(path)  # the first two updates reach the server
            return False
        return True

    with SandboxServer(target) as sb:
        assert cli(upload_args(sb, first, tmp_path / "run1"), sb.env).returncode == 0
        with HostileProxy(sb.base_url, seed=1302, rates={}) as proxy:
            args = upload_args(sb, second, tmp_path / "run2", "--on-existing", "update", "--concurrency", "2",
                               "--checkpoint-every", "0.02", via=proxy)
            gate = proxy.gate(third_update_on)
            proc = start_cli(args, sb.env)
            try:
                wait_until(lambda: proc.poll() is not None or gate.reached.is_set(), timeout=60, interval=0.005,
                           what="an update stopped at the gate")
                assert proc.poll() is None, f"the run ended before the kill: {proc.communicate(timeout=30)}"
                proc.send_signal(signal.SIGKILL)
                proc.communicate(timeout=30)
            finally:
                stop(proc)
            gate.drop()  # the stopped updates never reach the server
            proxy.drain()
            wait_until(lambda: in_flight(sb) == 0, timeout=30, what="no request in flight at the sandbox")
            assert gate.stopped >= 1
            halfway = _at_server(target, sb)
            not_yet = {ext for ext in corrected
                       if sorted(halfway[ext]["items"], key=repr)
                       != sorted(support(target).record_items(fixed[_index(fixed, ext)]), key=repr)}
            assert not_yet, "every update landed before the kill: the test proves nothing"
            done = cli(args, sb.env)
            assert done.returncode == 0, done.stderr
            after = _at_server(target, sb)
    assert len(after) == N
    _assert_matches(target, after, fixed)
    actions = _actions(tmp_path / "run2")
    assert Counter(row["external_id"] for row in read_id_map(tmp_path / "run2")) == Counter(
        d["external_id"] for d in docs)
    for ext in not_yet:
        # anny's update is several requests (PATCH, item DELETEs, item POSTs): one whose PATCH
        # landed before the kill but after the last checkpoint is finished by the resumed run
        # as the job's own unfinished steps and labelled `existing` (README, "Correct and
        # re-run": the label, not the content, is inexact in that window). Single-request
        # updates that had not landed are always `updated`.
        allowed = ("updated", "existing") if target == "anny" else ("updated",)
        assert actions[ext] in allowed, (ext, actions[ext])
    for ext, action in actions.items():
        # An update that landed before the kill, its outcome not checkpointed, is found equal:
        # `existing` (what an earlier run did is not known), never a failure or a create.
        assert action in (("updated", "existing") if ext in corrected else ("unchanged", "existing")), (ext, action)
    r = summary(tmp_path / "run2")["records"]
    assert r["failed"] == r["uncertain"] == r["rejected"] == 0 and r["read"] == N, r


def _index(docs: list[dict[str, Any]], ext: str) -> int:
    return next(i for i, d in enumerate(docs) if d["external_id"] == ext)


#: a status whose invoice the target's API will not change, and what its refusal says
LOCKED = {"agiled": ("paid", "A paid invoice cannot be changed"),
          "anny": ("sent", "Only a draft invoice"),
          "coperniq": ("paid", "cannot be changed")}


@pytest.mark.parametrize("locked_target", sorted(LOCKED))
def test_an_invoice_the_api_will_not_change_fails_with_its_answer(locked_target: str, tmp_path: Path) -> None:
    target = locked_target
    status, words = LOCKED[target]
    docs = _docs(seed=1303)[:4]
    for d in docs:
        d["status"] = status
        d["issue_date"] = d.get("issue_date") or "2026-03-01"
        d["due_date"] = None
    first, second, _, corrected = _exports(tmp_path, docs)
    assert corrected
    with SandboxServer(target) as sb:
        done = cli(upload_args(sb, first, tmp_path / "run1"), sb.env)
        assert done.returncode == 0, done.stderr
        before = _at_server(target, sb)
        refused = cli(upload_args(sb, second, tmp_path / "run2", "--on-existing", "update"), sb.env)
        assert refused.returncode == 1, refused.stderr
        assert _at_server(target, sb) == before  # nothing changed
    reasons = {r["external_id"]: r for r in read_reasons(tmp_path / "run2")}
    assert set(reasons) == corrected
    for r in reasons.values():
        assert r["kind"] == "failed" and r["stage"] == "update" and r["http_status"] in ("400", "422"), r
        assert words in r["message"], r
        assert r["field"] or target == "anny", r  # anny's answer names no field here
    assert set(_actions(tmp_path / "run2").values()) == {"unchanged"}


# --- run directories written before the `action` column ------------------------------------------

LEGACY_HEADER = "external_id,invoice_id,line,customer_id,status,currency,net,tax,gross\n"


def test_a_run_directory_of_the_previous_version_is_resumed_in_its_own_format(tmp_path: Path) -> None:
    old = LEGACY_HEADER + "INV-1,11,1,C-1,draft,EUR,1.00,0.19,1.19\n"
    (tmp_path / "id_map.csv").write_text(old, encoding="utf-8")
    outputs = Outputs(tmp_path, {"id_map.csv": len(old.encode())})
    outputs.created(["INV-2", "12", 2, "C-1", "draft", "EUR", "2.00", "0.38", "2.38", "updated"])
    outputs.flush()  # a checkpoint
    outputs.close()
    rows = (tmp_path / "id_map.csv").read_text(encoding="utf-8").splitlines()
    assert rows == [LEGACY_HEADER.strip(), "INV-1,11,1,C-1,draft,EUR,1.00,0.19,1.19",
                    "INV-2,12,2,C-1,draft,EUR,2.00,0.38,2.38"]  # one table: no column appears mid-file

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    outputs = Outputs(fresh, None)
    outputs.created(["INV-3", "13", 1, "C-1", "draft", "EUR", "1.00", "0.19", "1.19", "unchanged"])
    outputs.flush()
    outputs.close()
    rows = (fresh / "id_map.csv").read_text(encoding="utf-8").splitlines()
    assert rows == [",".join(ID_MAP_HEADER), "INV-3,13,1,C-1,draft,EUR,1.00,0.19,1.19,unchanged"]


def test_merge_takes_shards_of_both_formats(tmp_path: Path) -> None:
    from bulk.checkpoint import Checkpoint
    from bulk.merge import _copy_id_maps, _Shard  # merge's private parts: only this test depends on them

    old, new, out = tmp_path / "old", tmp_path / "new", tmp_path / "out"
    for d in (old, new, out):
        d.mkdir()
    (old / "id_map.csv").write_text(LEGACY_HEADER + "INV-1,11,1,C-1,draft,EUR,1.00,0.19,1.19\n", encoding="utf-8")
    (new / "id_map.csv").write_text(",".join(ID_MAP_HEADER) + "\nINV-2,12,2,C-1,draft,EUR,1.00,0.19,1.19,updated\n",
                                    encoding="utf-8")
    _copy_id_maps([_Shard(old, 0, 2, Checkpoint()), _Shard(new, 1, 2, Checkpoint())], out)
    with open(out / "id_map.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [(r["external_id"], r["action"]) for r in rows] == [("INV-1", ""), ("INV-2", "updated")]
    _copy_id_maps([_Shard(old, 0, 2, Checkpoint()), _Shard(old, 1, 2, Checkpoint())], out)  # all old: copied as is
    assert (out / "id_map.csv").read_text(encoding="utf-8").splitlines()[0] == LEGACY_HEADER.strip()


# --- the sandboxes' update endpoints validate as their creates do -----------------------------------

def _raw(sb: SandboxServer, method: str, path: str, body: Any = None, *,
         content_type: str = "application/json") -> tuple[int, Any]:
    cls = get_target(sb.target)
    headers = {**cls(base_url=sb.base_url, credentials=sb.env, options={}).headers(), "Content-Type": content_type}
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(sb.base_url + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        return exc.code, json.loads(raw) if raw else None


@pytest.fixture(params=UPDATING)
def made(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """A sandbox holding two uploaded draft invoices: (sandbox, its state)."""
    target = str(request.param)
    src = tmp_path / "in.ndjson"
    _write(src, _docs(seed=1304)[:2])
    with SandboxServer(target) as sb:
        assert cli(upload_args(sb, src, tmp_path / "run"), sb.env).returncode == 0
        yield sb, sb.state()


def test_update_endpoints_refuse_what_the_creates_refuse(made: Any) -> None:
    sb, state = made
    inv = state["invoices"]
    if sb.target == "agiled":
        a, b = inv[0], inv[1]
        body = {k: a[k] for k in ("invoice_number", "contact_id", "currency", "issue_date", "status",
                                  "tax_inclusive", "notes")}
        body["items"] = [{k: it[k] for k in ("name", "description", "quantity", "unit_price", "tax_rate", "sku")}
                         for it in a["items"]]
        status, answer = _raw(sb, "PUT", f"/public/v1/invoices/{a['id']}", {**body, "due_date": "2000-01-01",
                                                                              "issue_date": "2026-01-01"})
        assert status == 422 and "due_date" in answer["errors"], answer
        status, answer = _raw(sb, "PUT", f"/public/v1/invoices/{a['id']}",
                              {**body, "invoice_number": b["invoice_number"]})
        assert status == 422 and "invoice_number" in answer["errors"], answer
        assert _raw(sb, "PUT", "/public/v1/invoices/999999", body)[0] == 404
        status, answer = _raw(sb, "PUT", f"/public/v1/invoices/{a['id']}", {**body, "notes": "changed"})
        assert status == 200 and answer["data"]["notes"] == "changed" and answer["data"]["id"] == a["id"]
    elif sb.target == "chargeover":
        a, b = inv[0], inv[1]
        uri = f"/api/v3/invoice/{a['invoice_id']}"
        status, answer = _raw(sb, "PUT", uri, {"line_items": []})
        assert status == 400 and "line_items" in answer["message"], answer
        status, answer = _raw(sb, "PUT", uri, {"external_key": b["external_key"]})
        assert status == 400 and "already in use" in answer["message"], answer
        assert _raw(sb, "PUT", "/api/v3/invoice/1", {"memo": "x"})[0] == 404
        status, answer = _raw(sb, "PUT", uri, {"memo": "changed"})
        assert status == 202 and answer["response"]["id"] == a["invoice_id"], answer
        after = {i["invoice_id"]: i for i in sb.state()["invoices"]}[a["invoice_id"]]
        assert after["memo"] == "changed" and after["line_items"] == a["line_items"]  # what is not sent stays
    elif sb.target == "coperniq":
        a = inv[0]
        uri = f"/invoices/{a['id']}"
        status, answer = _raw(sb, "PATCH", uri, {"calculationMethod": "LINE_ITEMS"})
        assert status == 400 and answer["field"] == "calculationMethod", answer
        status, answer = _raw(sb, "PATCH", uri, {"recordId": 1})
        assert status == 400 and answer["field"] == "recordId", answer
        line = {k: a["lineItems"][0][k] for k in ("catalogItemId", "quantity", "unitCost", "unitPrice", "description")}
        status, answer = _raw(sb, "PATCH", uri, {"lineItems": [{**line, "catalogItemId": 99_999_999}]})
        assert status == 400 and "catalogItemId" in answer["field"], answer
        assert _raw(sb, "PATCH", "/invoices/1", {"description": "x"})[0] == 404
        status, answer = _raw(sb, "PATCH", uri, {"description": "changed"})
        assert status == 200 and answer["description"] == "changed" and len(answer["lineItems"]) == len(a["lineItems"])
    else:  # anny
        a = inv[0]
        o = "?o=sandbox-org"
        jsonapi = "application/vnd.api+json"
        uri = f"/api/v1/invoices/{a['id']}{o}"
        doc = {"data": {"type": "invoices", "id": a["id"], "attributes": {"notes": "changed"}}}
        assert _raw(sb, "PATCH", uri, {"data": {**doc["data"], "type": "items"}}, content_type=jsonapi)[0] == 409
        assert _raw(sb, "PATCH", uri, {"data": {**doc["data"], "id": "other"}}, content_type=jsonapi)[0] == 409
        status, answer = _raw(sb, "PATCH", uri, {"data": {**doc["data"], "attributes": {"currency": "USD"}}},
                              content_type=jsonapi)
        assert status == 422, answer
        assert _raw(sb, "PATCH", uri, doc)[0] == 415  # writes are JSON:API documents
        assert _raw(sb, "DELETE", f"/api/v1/items/nope{o}")[0] == 404
        status, answer = _raw(sb, "PATCH", uri, doc, content_type=jsonapi)
        assert status == 200 and answer["data"]["attributes"]["notes"] == "changed", answer


def test_correct_and_rerun_with_two_processes(target: str, tmp_path: Path) -> None:
    """``--processes 2``: the merged ID map keeps each row's action and the merged summary the
    shards' ``updated`` / ``unchanged`` counts and the corrected totals."""
    docs = _docs(seed=1303)
    spread = target != "coperniq"  # whose customers must stay those its sandbox maps to records
    for i, d in enumerate(docs if spread else []):  # four customers, so that both shards get invoices
        d["customer"]["external_id"] += f"-{i % 4}"
        d["customer"]["email"] = f"p{i % 4}-{d['customer']['email']}"
    ex = _exports(tmp_path, docs)
    with SandboxServer(target) as sb:
        done = cli(upload_args(sb, ex.first, tmp_path / "run1", "--processes", "2"), sb.env)
        assert done.returncode == 0, done.stderr
        assert set(_actions(tmp_path / "run1").values()) == {"created"}
        updating = cli(upload_args(sb, ex.second, tmp_path / "run2", "--processes", "2", "--on-existing", "update"),
                       sb.env)
        assert updating.returncode == 0, updating.stderr
        after = _at_server(target, sb)
    assert len(after) == N
    s = _assert_updated(target, after, ex, tmp_path / "run2", updating.stderr)
    assert s["processes"] == 2
    shards = [summary(d) for d in sorted((tmp_path / "run2" / "shards").iterdir())]
    assert len(shards) == 2
    if spread:  # both shards' rows survive the merge
        assert all(p["records"]["updated"] + p["records"]["unchanged"] > 0 for p in shards), shards
