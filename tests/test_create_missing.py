"""Issue 13, first two parts: ``--create-missing KINDS`` and ``--seed-from INPUT``.

A realistic export (SKUs such as ``SKU-0283``, customers the target does not know), through the
CLI against each target's sandbox (real sockets): without the flag it fails where the API needs
what it references (ChargeOver items, Coperniq catalog items and accounts); with
``--create-missing customers,items`` on a fresh sandbox every referenced object is created
exactly once, counted at the server, also under SIGKILLs (triggered by progress: a request held
at the proxy) and lost answers of the creates; a sandbox seeded from the export takes it with no
options; a kind a target cannot create is refused (exit 2) before anything is sent.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from harness import (
    SandboxServer,
    cli,
    client_env,
    kill_until_done,
    kill_when,
    no_duplicates,
    start_cli,
    summary,
    support,
)
from hostile_proxy import HostileProxy

from bulk.sandbox.seed_from import read_references, seed_options

TARGETS = ("agiled", "anny", "chargeover", "coperniq")
SKUS = ("SKU-0283", "SKU-1170", "SKU-0042", "SKU-2291", "SKU-0007")
CUSTOMERS = ("C-10293", "C-10294", "C-20077", "C-31415")
N = 10
#: the proxy's kinds of the creates of references (tests/hostile_proxy.request_kind)
REF_CREATES = {
    "agiled": {"POST /public/v1/contacts"},
    "anny": {"POST /api/v1/customers?o"},
    "chargeover": {"POST /api/v3/item", "POST /api/v3/customer"},
    "coperniq": {"POST /catalog-items", "POST /accounts?match_by&match_found_strategy"},
}


def export(path: Path, n: int = N, *, other: str = "USD") -> list[dict[str, Any]]:
    """A realistic export: 4 customers unknown to every sandbox, 5 SKUs none of them holds,
    whole quantities (Coperniq), each SKU once per invoice, EUR and ``other`` (RON is not a
    ChargeOver sandbox currency, and no API here creates currencies: only the seeding adds it)."""
    rows = []
    for k in range(n):
        cust = CUSTOMERS[k % len(CUSTOMERS)]
        skus = [SKUS[k % len(SKUS)], SKUS[(k + 2) % len(SKUS)]]
        rows.append({
            "external_id": f"EXP-2026-{k:04d}",
            "customer": {"external_id": cust, "email": f"{cust.lower()}@example.com", "name": f"Kunde {cust}",
                         "company": f"Firma {cust} GmbH",
                         "address": {"line1": "Ring 1", "line2": None, "city": "Köln", "region": None,
                                     "postal_code": "50667", "country": "DE"}},
            "currency": other if k % 3 == 0 else "EUR", "issue_date": "2026-03-31", "due_date": "2026-04-30",
            "status": "draft", "prices": "net", "notes": None,
            "lines": [{"title": f"Leistung {sku}", "description": None, "quantity": 1 + (k + i) % 3,
                       "unit_price": f"{10 + k}.{i}5", "tax_rate": "19", "item_ref": sku}
                      for i, sku in enumerate(skus)],
            "extra": {},
        })
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return rows


def args(target: str, base_url: str, path: Path, out: Path, *extra: str) -> list[str]:
    more = ["--option", "settle=1"] if target == "coperniq" else []
    return ["upload", str(path), "--target", target, "--base-url", base_url, "--out", str(out),
            "--rate", "100000", "--quiet", *more, *extra]


def made(target: str, state: dict[str, Any]) -> Counter[tuple[str, str]]:
    """(kind, key) of every customer / item / account the server holds for the export."""
    found: Counter[tuple[str, str]] = Counter()
    emails = {f"{c.lower()}@example.com": c for c in CUSTOMERS}
    if target == "chargeover":
        found.update(("item", i["external_key"]) for i in state["items"] if i["external_key"] in SKUS)
        found.update(("customer", c["external_key"]) for c in state["customers"] if c.get("external_key") in CUSTOMERS)
    elif target == "coperniq":
        found.update(("item", i["sku"]) for i in state["catalog_items"] if i["sku"] in SKUS)
        found.update(("account", a["title"]) for a in state["accounts"] if a["title"] in CUSTOMERS)
    else:
        customers = state["customers"] if target == "anny" else state["contacts"]
        for c in customers:
            email = (c.get("attributes") or c).get("email")
            if email in emails:
                found[("customer", emails[email])] += 1
    return found


def expected(target: str) -> set[tuple[str, str]]:
    if target == "chargeover":
        return {("item", s) for s in SKUS} | {("customer", c) for c in CUSTOMERS}
    if target == "coperniq":
        return {("item", s) for s in SKUS} | {("account", c) for c in CUSTOMERS}
    return {("customer", c) for c in CUSTOMERS}


def invoice_count(sb: SandboxServer) -> int:
    return len(support(sb.target).invoices(sb.state()))


def created_refs(out: Path) -> list[dict[str, str]]:
    with open(out / "created_refs.csv", encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _customer_key(target: str, row: dict[str, str]) -> tuple[str, str]:
    key = row["key"]
    if target == "anny":  # anny finds customers by e-mail: the e-mail is the key
        key = key.split("@")[0].upper()
    return row["kind"], key


def creating(target: str) -> list[str]:
    return ["--create-missing", "customers" if target in ("agiled", "anny") else "customers,items"]


@pytest.mark.parametrize("target", TARGETS)
def test_fresh_sandbox_fails_without_the_flag_and_creates_each_reference_once_with_it(target: str,
                                                                                     tmp_path: Path) -> None:
    path = tmp_path / "export.ndjson"
    export(path)
    with SandboxServer(target) as sb:
        if target in ("chargeover", "coperniq"):
            before = cli(args(target, sb.base_url, path, tmp_path / "plain"), sb.env)
            assert before.returncode == 1, before.stderr
            assert summary(tmp_path / "plain")["records"]["created"] == 0
            reasons = (tmp_path / "plain" / "failed_reasons.csv").read_text(encoding="utf-8")
            assert "SKU-" in reasons or "titled" in reasons, reasons
        out = tmp_path / "run"
        done = cli(args(target, sb.base_url, path, out, *creating(target)), sb.env)
        assert done.returncode == 0, done.stderr
        state = sb.state()
        assert invoice_count(sb) == N
        counts = made(target, state)
        assert set(counts) == expected(target) and set(counts.values()) == {1}, counts
        rows = created_refs(out)
        listed = [_customer_key(target, r) for r in rows]
        if target == "chargeover":  # its customers were made by the first job (as before the flag)
            listed += [_customer_key(target, r) for r in created_refs(tmp_path / "plain")]
        assert sorted(listed) == sorted(expected(target))
        assert sum(summary(out)["created_refs"].values()) == len(rows)
        assert "created what the invoices referenced:" in done.stderr and "created_refs.csv" in done.stderr
        # The same command again: nothing new is created, nothing listed twice.
        again = cli(args(target, sb.base_url, path, out, *creating(target)), sb.env)
        assert again.returncode == 0, again.stderr
        assert made(target, sb.state()) == counts and len(created_refs(out)) == len(rows)


@pytest.mark.parametrize("target", TARGETS)
def test_each_reference_created_once_under_kills_and_lost_answers(target: str, tmp_path: Path) -> None:
    path = tmp_path / "export.ndjson"
    export(path)
    out = tmp_path / "run"
    with SandboxServer(target) as sb:
        # The creates of what invoices reference lose their answers (committed, then the
        # connection dies): the client must look before it resends.
        # ChargeOver one request per call (not _bulk), so the proxy sees the item creates as such.
        more = {"chargeover": ["--option", "bulk=false"], "anny": ["--option", "settle=0.2"]}.get(target, [])
        with HostileProxy(sb.base_url, seed=13, rates={"drop_answer": 0.5}, cover=True, max_faults=2) as proxy:
            kills = kill_until_done(
                sb, proxy, lambda rng: args(target, proxy.base_url, path, out, "--concurrency", "4",
                                            *creating(target), *more),
                kills=2, seed=13, records=N, span=8, after_each=no_duplicates)
            by_kind = proxy.stats()["by_kind"]
        assert kills.done.returncode == 0, kills.done.stderr
        assert kills.delivered >= 1
        # a kill landed while a lookup or create of a reference was held (delivered late)
        assert any(word in kind for kind in kills.held_kinds
                   for word in ("contacts", "customer", "item", "accounts", "catalog-items")), kills.held_kinds
        lost = sum(fates.get("drop_answer", 0) for kind, fates in by_kind.items() if kind in REF_CREATES[target])
        assert lost >= 1, by_kind  # a create of a reference committed and lost its answer
        counts = made(target, sb.state())
        assert set(counts) == expected(target) and set(counts.values()) == {1}, (counts, proxy.stats())
        assert invoice_count(sb) == N
        rows = [_customer_key(target, r) for r in created_refs(out)]
        # Each listed once, also those created in the last second before a kill or found again
        # after a lost answer (the marks of bulk/marks.py).
        assert sorted(rows) == sorted(expected(target)), rows


@pytest.mark.parametrize("target", ["chargeover", "coperniq"])
def test_seed_from_makes_the_export_pass_with_no_options(target: str, tmp_path: Path) -> None:
    path = tmp_path / "export.ndjson"
    export(path, other="RON")
    options = seed_options(target, read_references(str(path)))
    with SandboxServer(target, options=options) as sb:
        held = made(target, sb.state())
        assert {("item", sku) for sku in SKUS} <= set(held)  # the SKUs were there before the run
        done = cli(args(target, sb.base_url, path, tmp_path / "run"), sb.env)
        assert done.returncode == 0, done.stderr
        assert invoice_count(sb) == N
        rows = {r["kind"] for r in created_refs(tmp_path / "run")}
        # ChargeOver creates the customers (as always); Coperniq finds the seeded accounts.
        assert rows == ({"customer"} if target == "chargeover" else set()), rows
        if target == "chargeover":
            assert {c["currency_iso4217"] for c in sb.state()["invoices"]} == {"EUR", "RON"}


def test_agiled_and_anny_need_no_seed() -> None:
    refs = read_references(str(Path(__file__).resolve().parent.parent / "fixtures" / "invoices.ndjson"))
    assert refs.customers and refs.currencies  # it read the file
    assert seed_options("agiled", refs) == seed_options("anny", refs) == {}


def test_sandbox_command_seed_from(tmp_path: Path) -> None:
    """``bulk sandbox --seed-from`` serves the export's SKUs, accounts and currencies."""
    path = tmp_path / "export.ndjson"
    export(path, other="RON")
    proc = subprocess.Popen([sys.executable, "-m", "bulk", "sandbox", "--target", "coperniq", "--port", "0",
                             "--seed-from", str(path)], env=client_env({}), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline() if proc.stderr else ""
        url = line.split(" listening on ", 1)[1].split(" ", 1)[0]
        import urllib.request

        with urllib.request.urlopen(url + "/_sandbox/state", timeout=10) as resp:
            state = json.loads(resp.read())
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
    assert {i["sku"] for i in state["catalog_items"]} >= set(SKUS)
    assert {a["title"] for a in state["accounts"]} >= set(CUSTOMERS)


@pytest.mark.parametrize("target", ["agiled", "anny"])
def test_a_kind_the_api_cannot_create_exits_2_before_anything(target: str, tmp_path: Path) -> None:
    path = tmp_path / "export.ndjson"
    export(path)
    with SandboxServer(target) as sb:
        done = cli(args(target, sb.base_url, path, tmp_path / "run", "--create-missing", "customers,items"), sb.env)
        assert done.returncode == 2, done.stderr
        assert "--create-missing items" in done.stderr and target in done.stderr
        assert not (tmp_path / "run").exists()
        assert sb.state()["requests"]["total"] == 0  # nothing was sent


def test_unknown_kind_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "export.ndjson"
    export(path)
    done = cli(["upload", str(path), "--target", "chargeover", "--create-missing", "products", "--out",
                str(tmp_path / "run")], {})
    assert done.returncode == 2 and "customers, items" in done.stderr, done.stderr


def test_embedded_sandbox_seeds_from_the_input_but_not_the_kinds_being_created(tmp_path: Path) -> None:
    path = tmp_path / "export.ndjson"
    export(path)
    plain = cli(["upload", str(path), "--target", "coperniq", "--out", str(tmp_path / "a"), "--quiet"], {})
    assert plain.returncode == 0, plain.stderr  # seeded: accounts and catalog items exist
    assert summary(tmp_path / "a")["created_refs"] == {"customer": 0, "item": 0, "account": 0}
    rehearse = cli(["upload", str(path), "--target", "coperniq", "--out", str(tmp_path / "b"), "--quiet",
                    "--create-missing", "customers,items"], {})
    assert rehearse.returncode == 0, rehearse.stderr
    assert summary(tmp_path / "b")["created_refs"] == {"customer": 0, "item": len(SKUS), "account": len(CUSTOMERS)}


def _call(sb: SandboxServer, method: str, path: str, body: Any, headers: dict[str, str]) -> tuple[int, Any]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(sb.base_url + path, data=json.dumps(body).encode(), method=method,
                                 headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_sandbox_creates_validate_and_keep_keys_unique() -> None:
    import base64

    with SandboxServer("chargeover") as sb:
        auth = {"Authorization": "Basic " + base64.b64encode(
            f"{sb.env['CHARGEOVER_PUBLIC_KEY']}:{sb.env['CHARGEOVER_PRIVATE_KEY']}".encode()).decode()}
        assert _call(sb, "POST", "/api/v3/item", {"name": "Widget", "external_key": "SKU-0283"}, auth)[0] == 201
        status, body = _call(sb, "POST", "/api/v3/item", {"name": "Widget 2", "external_key": "SKU-0283"}, auth)
        assert status == 400 and "already in use" in body["message"]
        assert _call(sb, "POST", "/api/v3/item", {"external_key": "SKU-9"}, auth)[1]["message"] == "name: is required"
        assert "type" in _call(sb, "POST", "/api/v3/item", {"name": "x", "type": "gadget"}, auth)[1]["message"]
        assert _call(sb, "POST", "/api/v3/item", {"name": "x", "price": 3}, auth)[0] == 400  # unknown field
    with SandboxServer("coperniq") as sb:
        key = {"x-api-key": sb.env["COPERNIQ_API_KEY"]}
        item = {"name": "Panel", "type": "PRODUCT", "category": "PV_MODULE", "cost": 0, "price": 12.5,
                "sku": "SKU-0283"}
        status, made_item = _call(sb, "POST", "/catalog-items", item, key)
        assert status == 201 and made_item["sku"] == "SKU-0283" and not made_item["isArchived"]
        status, body = _call(sb, "POST", "/catalog-items", item, key)
        assert (status, body["field"]) == (400, "sku")  # an active item holds the SKU
        for field, bad in (("category", "INSTALLATION"), ("category", "OTHER"), ("type", "THING"), ("cost", "1")):
            status, body = _call(sb, "POST", "/catalog-items", {**item, "sku": "SKU-7", field: bad}, key)
            assert (status, body["field"]) == (400, field), body
        account = {"title": "C-10293", "address": ["Ring 1, Köln"]}
        status, first = _call(sb, "POST", "/accounts", account, key)
        assert status == 200 and first["title"] == "C-10293"
        status, again = _call(sb, "POST", "/accounts?match_by=title&match_found_strategy=skip", account, key)
        assert (status, again["id"]) == (200, first["id"])  # matched by title, not made twice
        assert _call(sb, "POST", "/accounts", {"title": "C-2"}, key)[1]["field"] == "address"
        titles = Counter(a["title"] for a in sb.state()["accounts"])
        assert titles["C-10293"] == 1 and "C-2" not in titles


#: the paths of the creates of references, per target (for the proxy's match)
REF_CREATE_PATHS = {"agiled": ("/public/v1/contacts",), "anny": ("/api/v1/customers",),
                    "chargeover": ("/api/v3/item", "/api/v3/customer"), "coperniq": ("/catalog-items", "/accounts")}


@pytest.mark.parametrize("target", TARGETS)
def test_a_create_answered_just_before_a_kill_is_listed_once(target: str, tmp_path: Path) -> None:
    """The run is killed right after a reference create's answer came in (its next request is
    held at the proxy), long before any checkpoint: the resumed run finds the object and must
    list it in created_refs.csv, once, with every other object the job created."""
    path = tmp_path / "export.ndjson"
    export(path)
    out = tmp_path / "run"
    more = {"chargeover": ["--option", "bulk=false"], "anny": ["--option", "settle=0.2"]}.get(target, [])
    with SandboxServer(target) as sb, HostileProxy(sb.base_url, seed=13, rates={}) as proxy:
        command = args(target, proxy.base_url, path, out, "--concurrency", "1", "--checkpoint-every", "3600",
                       *creating(target), *more)
        hold = proxy.hold_next_after(lambda method, p, _: method == "POST" and p.endswith(REF_CREATE_PATHS[target]))
        kill_when(sb, command, hold.reached.is_set, timeout=90, what="the request after a reference create")
        hold.release()
        proxy.drain()
        before = made(target, sb.state())
        assert sum(before.values()) >= 1  # the create landed, its answer was read
        done = cli(command, sb.env)
        assert done.returncode == 0, done.stderr
        counts = made(target, sb.state())
    assert set(counts) == expected(target) and set(counts.values()) == {1}, counts
    listed = [_customer_key(target, r) for r in created_refs(out)]
    assert sorted(listed) == sorted(expected(target)), listed  # every one the job created, once
    assert sum(summary(out)["created_refs"].values()) == len(listed)


def _listed_once(target: str, out: Path) -> None:
    """created_refs.csv of ``out`` lists every reference of the export once, and the summary counts those rows."""
    rows = created_refs(out)
    listed = [_customer_key(target, r) for r in rows]
    assert sorted(listed) == sorted(expected(target)), listed
    kinds = Counter(r["kind"] for r in rows)
    assert summary(out)["created_refs"] == {k: kinds.get(k, 0) for k in ("customer", "item", "account")}


def test_two_processes_refuse_to_create_items_an_api_could_duplicate(tmp_path: Path) -> None:
    """Coperniq's catalog items have no unique key: two processes could each find a SKU missing
    and create it, so --create-missing items with --processes 2 is refused before anything starts."""
    path = tmp_path / "export.ndjson"
    export(path, n=4)
    with SandboxServer("coperniq") as sb:
        done = cli(args("coperniq", sb.base_url, path, tmp_path / "run", "--processes", "2",
                        *creating("coperniq")), sb.env)
        assert done.returncode == 2 and "needs one process" in done.stderr, done.stderr
        assert sb.state()["requests"]["total"] == 0


@pytest.mark.parametrize("target", ["chargeover", "coperniq"])
def test_two_processes_list_each_created_reference_once(target: str, tmp_path: Path) -> None:
    """``--processes 2``: the shards share the SKUs (ChargeOver's unique external_key refuses a
    second create; Coperniq creates only accounts here, which both shards may list: one created,
    the other found by its title); the merged created_refs.csv lists each reference once."""
    path = tmp_path / "export.ndjson"
    export(path, n=16)
    out = tmp_path / "run"
    if target == "chargeover":
        kinds, options = creating(target), {}
    else:  # the catalog holds the SKUs (seeded from the export); the accounts are created
        kinds = ["--create-missing", "customers"]
        options = {"options": seed_options(target, read_references(str(path)), leave_out=frozenset({"customers"}))}
    listed = {k for k in expected(target) if target == "chargeover" or k[0] == "account"}
    with SandboxServer(target, **options) as sb:
        done = cli(args(target, sb.base_url, path, out, "--processes", "2", "--concurrency", "4", *kinds), sb.env)
        assert done.returncode == 0, done.stderr
        counts = made(target, sb.state())
    assert set(counts) == expected(target) and set(counts.values()) == {1}, counts
    assert summary(out)["processes"] == 2
    rows = created_refs(out)
    assert sorted(_customer_key(target, r) for r in rows) == sorted(listed), rows
    kinds_listed = Counter(r["kind"] for r in rows)
    assert summary(out)["created_refs"] == {k: kinds_listed.get(k, 0) for k in ("customer", "item", "account")}
    assert "created what the invoices referenced:" in done.stderr
    # the shards' own lists together hold every reference (the merge lost none)
    shards = sorted((out / "shards").iterdir())
    assert len(shards) == 2
    assert {_customer_key(target, r) for d in shards for r in created_refs(d)} == listed


def test_shards_merged_list_each_created_reference_once(tmp_path: Path) -> None:
    """``--shard K/2`` side by side, then ``bulk merge``: one created_refs.csv, counts from its
    rows; a shard's list changed after its run is refused as the other outputs are."""
    target = "coperniq"
    path = tmp_path / "export.ndjson"
    export(path, n=16)
    with SandboxServer(target) as sb:
        procs = [start_cli(args(target, sb.base_url, path, tmp_path / f"s{k}", "--shard", f"{k}/2",
                                *creating(target)), sb.env) for k in range(2)]
        for p in procs:
            _, err = p.communicate(timeout=120)
            assert p.returncode == 0, err
        counts = made(target, sb.state())
    assert set(counts) == expected(target) and set(counts.values()) == {1}, counts
    merged = tmp_path / "merged"
    done = cli(["merge", str(tmp_path / "s0"), str(tmp_path / "s1"), "--out", str(merged)], {})
    assert done.returncode == 0, done.stderr
    _listed_once(target, merged)
    parts = [summary(tmp_path / f"s{k}")["created_refs"] for k in range(2)]
    assert sum(sum(p.values()) for p in parts) >= len(created_refs(merged))
    with open(tmp_path / "s1" / "created_refs.csv", "a", encoding="utf-8") as f:
        f.write("item,SKU-9999,77\n")
    again = cli(["merge", str(tmp_path / "s0"), str(tmp_path / "s1"), "--out", str(tmp_path / "m2")], {})
    assert again.returncode == 2 and "changed after its run" in again.stderr, again.stderr
