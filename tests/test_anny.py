"""anny: the sandbox dialect over real sockets, the client's own rules, and the workflow end to
end through the CLI, including a SIGKILL at each step of it (customer, address, invoice, k of
n items, send, set-paid) followed by a resume. Every end-to-end case is checked against
``/_sandbox/state``: each invoice once, each item once, totals by the money rule."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from anny_reads import AnnyObjects
from harness import (
    SECRET,
    SandboxServer,
    assert_exactly_once,
    cli,
    kill_until_done,
    kill_when,
    read_id_map,
    read_reasons,
    start_cli,
    summary,
    upload_args,
    write_input,
)
from hostile_proxy import HostileProxy

from bulk.errors import ConfigError, InvalidRecord
from bulk.records import Record, parse_record
from bulk.sandbox import SandboxConfig, SandboxConfigError, serve
from bulk.sandbox._site import TCPSite
from bulk.sandbox.anny import AnnySandbox
from bulk.sandbox.anny_rules import IdenticalGuard
from bulk.targets.anny import AnnyTarget, line_key, match_items
from bulk.transport import Reply, dumps

ORG, TOKEN = "org-1", "tok"
JSONAPI = "application/vnd.api+json"


# --- the sandbox, in process --------------------------------------------------------------


class Api:
    """(status, body, headers) per call; ``o`` and the token unless told otherwise."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session

    async def call(self, method: str, path: str, body: Any = None, *, org: str | None = ORG,
                   token: str | None = TOKEN, content_type: str = JSONAPI, limit: float = 5,
                   **query: str) -> tuple[int, Any, Any]:
        params = {**({"o": org} if org is not None else {}), **query}
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        data = None
        if body is not None:
            data, headers["Content-Type"] = dumps(body), content_type
        async with self.session.request(method, "/api/v1" + path, params=params, data=data, headers=headers,
                                        timeout=aiohttp.ClientTimeout(total=limit)) as resp:
            return resp.status, json.loads(await resp.read() or b"null", parse_float=Decimal), resp.headers

    async def create(self, kind: str, attributes: dict[str, Any], **rels: tuple[str, str]) -> dict[str, Any]:
        status, body, _ = await self.call("POST", f"/{kind}", resource(kind, attributes, **rels))
        assert status == 201, body
        return body["data"]  # type: ignore[no-any-return]


def resource(kind: str, attributes: dict[str, Any], **rels: tuple[str, str]) -> dict[str, Any]:
    data: dict[str, Any] = {"type": kind, "attributes": attributes}
    if rels:
        data["relationships"] = {k: {"data": {"type": t, "id": i}} for k, (t, i) in rels.items()}
    return {"data": data}


@asynccontextmanager
async def running(**config: Any) -> AsyncIterator[tuple[Any, Api]]:
    config.setdefault("token", TOKEN)
    config.setdefault("options", {"organization": ORG})
    async with serve("anny", SandboxConfig(**config)) as sandbox, aiohttp.ClientSession(sandbox.base_url) as s:
        yield sandbox, Api(s)


async def draft(api: Api, number: str = "N-1", *, from_net: bool = True, currency: str = "EUR",
                issued: str | None = "2026-03-31") -> str:
    invoice = await api.create("invoices", {"number": number, "currency": currency,
                                            "calculate_from_net": from_net, "issued_at": issued})
    return str(invoice["id"])


def item(invoice_id: str, **attrs: Any) -> dict[str, Any]:
    base = {"title": "Beratung", "quantity": 1, "tax_rate": 19, "single_net_amount": Decimal("10.00")}
    return resource("items", {**base, **attrs}, document=("invoices", invoice_id))


async def post_item(api: Api, body: dict[str, Any], from_net: bool = True) -> tuple[int, Any, Any]:
    return await api.call("POST", "/items", body, calculate_from_net=str(from_net).lower())


def pointers(body: Any) -> list[str]:
    return [e["source"].get("pointer") or e["source"].get("parameter") for e in body["errors"]]


@pytest.mark.anyio
async def test_organization_token_and_media_type() -> None:
    async with running() as (_, api):
        status, body, _ = await api.call("GET", "/customers", token=None)
        assert status == 401 and body["errors"][0]["status"] == "401"
        status, body, _ = await api.call("GET", "/customers", org=None)
        assert status == 400 and pointers(body) == ["o"]
        assert (await api.call("GET", "/customers", org="someone-else"))[0] == 403
        assert (await api.call("GET", "/customers"))[0] == 200
        attrs = {"email": "a@example.com", "locale": "de"}
        status, body, _ = await api.call("POST", "/customers", resource("customers", attrs),
                                         content_type="application/json")
        assert status == 415 and body["errors"][0]["status"] == "415"
        assert (await api.call("POST", "/customers", {"data": {"type": "people", "attributes": attrs}}))[0] == 409
        status, _, headers = await api.call("POST", "/customers", resource("customers", attrs))
        assert status == 201 and headers["Content-Type"].startswith(JSONAPI)


@pytest.mark.anyio
async def test_customers_need_email_and_locale_and_are_found_by_email() -> None:
    async with running() as (_, api):
        status, body, _ = await api.call("POST", "/customers", resource("customers", {"given_name": "Jane"}))
        assert status == 422 and pointers(body) == ["/data/attributes/email", "/data/attributes/locale"]
        bad = {"email": "jane..doe@example.com", "locale": "de", "nickname": "JD"}
        status, body, _ = await api.call("POST", "/customers", resource("customers", bad))
        assert pointers(body) == ["/data/attributes/nickname", "/data/attributes/email"]
        customer = await api.create("customers", {"email": "Jane@Example.com", "locale": "de", "given_name": "Jane"})
        address = await api.create("addresses", {"city": "Köln", "country_code": "DE"},
                                   addressable=("customers", customer["id"]))
        status, body, _ = await api.call("GET", "/customers", **{"filter[email]": "jane@example.COM",
                                                                   "include": "address"})
        assert [c["id"] for c in body["data"]] == [customer["id"]]
        assert body["data"][0]["relationships"]["address"]["data"]["id"] == address["id"]
        assert [a["attributes"]["city"] for a in body["included"]] == ["Köln"]
        assert (await api.call("GET", "/customers", include="orders"))[0] == 400


@pytest.mark.anyio
async def test_invoice_number_unique_per_organization() -> None:
    async with running(options={}) as (sandbox, api):
        await draft(api, "INV-1")
        status, body, _ = await api.call("POST", "/invoices", resource("invoices", {"number": "INV-1",
                                                                                    "currency": "EUR"}))
        assert status == 422 and pointers(body) == ["/data/attributes/number"]
        status, _, _ = await api.call("POST", "/invoices", resource("invoices", {"number": "INV-1",
                                                                                 "currency": "EUR"}), org="org-2")
        assert status == 201
        status, body, _ = await api.call("POST", "/invoices", resource("invoices", {"currency": "EUR",
                                                                                    "status": "paid"}))
        assert status == 422 and pointers(body) == ["/data/attributes/status"]
        status, body, _ = await api.call("GET", "/invoices", **{"filter[number]": "INV-1"})
        assert [inv["attributes"]["number"] for inv in body["data"]] == ["INV-1"]
        assert sorted(inv["organization"] for inv in (await sandbox.state())["invoices"]) == [ORG, "org-2"]


@pytest.mark.anyio
async def test_item_validation() -> None:
    async with running() as (_, api):
        invoice_id = await draft(api)
        status, body, _ = await post_item(api, item(invoice_id, title="x" * 186, quantity=Decimal("1.5")))
        assert status == 422
        assert pointers(body) == ["/data/attributes/title", "/data/attributes/quantity"]
        status, body, _ = await post_item(api, item(invoice_id, quantity="2", single_net_amount="10.00"))
        assert pointers(body) == ["/data/attributes/quantity", "/data/attributes/single_net_amount"]
        status, body, _ = await post_item(api, item(invoice_id, single_gross_amount=Decimal("11.90")))
        assert pointers(body) == ["/data/attributes/single_gross_amount"]
        status, body, _ = await post_item(api, item(invoice_id), from_net=False)
        assert pointers(body) == ["/data/attributes/single_gross_amount", "/data/attributes/single_net_amount",
                                  "calculate_from_net"]
        assert (await post_item(api, item("nope")))[0] == 422
        assert (await post_item(api, item(invoice_id, title="x" * 185)))[0] == 201


@pytest.mark.anyio
async def test_totals_recalculate_after_every_item_by_the_money_rule() -> None:
    async with running() as (_, api):
        net_id = await draft(api, "NET")
        totals = []
        for body in (item(net_id, quantity=3, single_net_amount=Decimal("10.005")),  # 30.015 -> 30.02
                     item(net_id, quantity=1, tax_rate=7, single_net_amount=Decimal("-5.00"))):
            status, answer, _ = await post_item(api, body)
            assert status == 201
            _, invoice, _ = await api.call("GET", f"/invoices/{net_id}")
            a = invoice["data"]["attributes"]
            totals.append((a["net_amount"], a["tax_amount"], a["total"]))
        assert answer["data"]["attributes"]["single_gross_amount"] == Decimal("-5.35")
        assert totals == [(Decimal("30.02"), Decimal("5.70"), Decimal("35.72")),
                          (Decimal("25.02"), Decimal("5.35"), Decimal("30.37"))]
        gross_id = await draft(api, "GROSS", from_net=False, currency="JPY")
        status, _, _ = await post_item(api, resource("items", {"title": "Design", "quantity": 3, "tax_rate": 10,
                                                               "single_gross_amount": 1001},
                                                     document=("invoices", gross_id)), from_net=False)
        _, invoice, _ = await api.call("GET", f"/invoices/{gross_id}", include="items")
        a = invoice["data"]["attributes"]
        assert (a["net_amount"], a["tax_amount"], a["total"]) == (2730, 273, 3003)  # 3003 * 100 / 110
        assert a["vat_breakdown"] == [{"tax_rate": 10, "item_count": 1, "net_amount": 2730,
                                       "tax_amount": 273, "gross_amount": 3003}]
        assert [i["attributes"]["title"] for i in invoice["included"]] == ["Design"]


@pytest.mark.anyio
async def test_send_only_from_draft_and_set_paid_only_from_sent() -> None:
    async with running() as (_, api):
        empty = await draft(api, "EMPTY")
        assert (await api.call("POST", f"/invoices/{empty}/send"))[0] == 422  # no items
        undated = await draft(api, "UNDATED", issued=None)
        await post_item(api, item(undated))
        status, body, _ = await api.call("POST", f"/invoices/{undated}/send")
        assert status == 422 and pointers(body) == ["/data/attributes/issued_at"]
        invoice_id = await draft(api)
        await post_item(api, item(invoice_id))
        status, body, _ = await api.call("PUT", f"/invoices/{invoice_id}/set-paid", {"send_notification": False})
        assert status == 422 and body["errors"][0]["detail"] == "invoice not in SENT status"
        status, body, _ = await api.call("POST", f"/invoices/{invoice_id}/send")
        assert status == 200 and body["data"]["attributes"]["status"] == "sent"
        assert (await api.call("POST", f"/invoices/{invoice_id}/send"))[0] == 422
        assert (await post_item(api, item(invoice_id)))[0] == 422  # no items once sent
        _, one, _ = await api.call("GET", f"/invoices/{invoice_id}")
        item_id = one["data"]["relationships"]["items"]["data"][0]["id"]
        # DELETE /items/{id} is our assumption (for --on-existing update): only on a draft
        assert (await api.call("DELETE", f"/items/{item_id}"))[0] == 422
        status, body, _ = await api.call("POST", f"/invoices/{invoice_id}/set-paid", sendNotification="true")
        assert status == 200 and body["data"]["attributes"]["status"] == "paid"
        for method in ("PUT", "POST"):
            assert (await api.call(method, f"/invoices/{invoice_id}/set-paid"))[0] == 422


@pytest.mark.anyio
async def test_identical_request_guard_and_rate_limit_answer_429_with_retry_after() -> None:
    async with running(rate_limit=1, burst=1) as (_, api):
        statuses = [(await api.call("GET", "/invoices", **{"filter[number]": "X"}))[0] for _ in range(5)]
        assert statuses == [200, 200, 200, 200, 429]
        status, body, headers = await api.call("GET", "/invoices", **{"filter[number]": "X"})
        assert status == 429 and headers["Retry-After"] == "1" and body["errors"][0]["status"] == "429"
        assert not [h for h in headers if h.lower().startswith("x-ratelimit")]
        assert (await api.call("GET", "/invoices", **{"filter[number]": "Y"}))[0] == 200
        await draft(api, "A")  # the one write the bucket holds
        status, _, headers = await api.call("POST", "/invoices", resource("invoices", {"currency": "EUR"}))
        assert status == 429 and int(headers["Retry-After"]) >= 1


@pytest.mark.anyio
async def test_faults_lose_the_answer_after_commit() -> None:
    async with running(lose_rate=1.0) as (sandbox, api):
        with pytest.raises(aiohttp.ClientError):
            await api.call("POST", "/customers", resource("customers", {"email": "a@example.com", "locale": "en"}))
        assert [c["email"] for c in (await sandbox.state())["customers"]] == ["a@example.com"]
        await sandbox.set_faults(lose_rate=0.0, fail_rate=1.0)
        status, body, _ = await api.call("GET", "/customers")
        assert status == 500 and body["errors"][0]["status"] == "500"


@pytest.mark.anyio
async def test_hold_stops_answering_after_the_nth_commit_until_released() -> None:
    async with running(options={"organization": ORG, "hold": {"after": "invoice", "count": 2}}) as (sandbox, api):
        await draft(api, "FIRST")
        with pytest.raises(TimeoutError):  # committed, then no answer
            await api.call("POST", "/invoices", resource("invoices", {"number": "SECOND", "currency": "EUR"}),
                           limit=0.5)
        state = await sandbox.state()
        assert [i["number"] for i in state["invoices"]] == ["FIRST", "SECOND"] and state["hold"]["stopped"]
        with pytest.raises(TimeoutError):  # nothing is answered any more
            await api.call("GET", "/invoices", limit=0.3)
        async with api.session.post("/_sandbox/hold", json={}) as resp:
            assert (await resp.json())["stopped"] is False
        assert (await api.call("GET", "/invoices"))[0] == 200
        assert len((await sandbox.state())["invoices"]) == 2


def test_identical_guard_is_a_sliding_second() -> None:
    now = [0.0]
    guard = IdenticalGuard(4, clock=lambda: now[0])
    assert [guard.admit("k") for _ in range(5)] == [0, 0, 0, 0, 1]
    assert guard.admit("other") == 0
    now[0] = 0.999
    assert guard.admit("k") == 1
    now[0] = 1.0  # the first four left the window; the refused one was never counted
    assert [guard.admit("k") for _ in range(5)] == [0, 0, 0, 0, 1]
    assert IdenticalGuard(0).admit("k") == 0


def test_sandbox_options_are_checked() -> None:
    for options in ({"hold": {"after": "lunch", "count": 1}}, {"identical_per_second": -1},
                    {"rounding": "up"}, {"organization": ""}):
        with pytest.raises(SandboxConfigError):
            AnnySandbox(SandboxConfig(options=options))


# --- the client's own rules -----------------------------------------------------------------


def record(**overrides: Any) -> Record:
    data: dict[str, Any] = {
        "external_id": "INV-1", "currency": "EUR", "status": "draft", "prices": "net",
        "customer": {"external_id": "C-1", "email": "jane@example.com", "name": "Jane Doe"},
        "lines": [{"title": "A", "quantity": 2, "unit_price": "10.00", "tax_rate": "19"}],
    }
    data.update(overrides)
    return parse_record(json.dumps(data).encode(), 7)


def test_fractional_quantity_is_rejected_naming_the_line_and_field() -> None:
    target = AnnyTarget(base_url="", credentials={}, options={})
    target.check(record(lines=[{"title": "A", "quantity": "2.0", "unit_price": "1", "tax_rate": "0"}]))
    lines = [{"title": "A", "quantity": 1, "unit_price": "1", "tax_rate": "0"},
             {"title": "B", "quantity": "1.5", "unit_price": "1", "tax_rate": "0"}]
    with pytest.raises(InvalidRecord) as caught:
        target.check(record(lines=lines))
    assert caught.value.field == "lines[1].quantity" and caught.value.line_no == 7
    assert "whole" in caught.value.message


def test_items_match_lines_with_multiplicity() -> None:
    r = record(lines=[{"title": t, "quantity": 1, "unit_price": "5", "tax_rate": "7"} for t in "AAB"])
    keys = [line_key(line) for line in r.lines]
    a, b = keys[0], keys[2]
    assert match_items(keys, [("i1", a)]) == ({0: "i1"}, [])
    assert match_items(keys, [("i2", b), ("i1", a), ("i3", a)]) == ({0: "i1", 1: "i3", 2: "i2"}, [])
    other = (a[0], a[1], a[2], a[3], Decimal("5.01"))
    assert match_items(keys, [("i1", a), ("i9", other)]) == ({0: "i1"}, ["i9"])


def test_configuration() -> None:
    with pytest.raises(ConfigError, match="organization"):
        AnnyTarget(base_url="https://b.anny.co", credentials={"ANNY_API_TOKEN": "tok-anny-test"}, options={})
    with pytest.raises(ConfigError, match="writes_per_minute"):
        AnnyTarget(base_url="", credentials={}, options={"writes_per_minute": "0"})
    for settle in ("soon", "-1", "3601"):
        with pytest.raises(ConfigError, match="settle"):
            AnnyTarget(base_url="", credentials={}, options={"settle": settle})
    assert AnnyTarget(base_url="", credentials={}, options={"settle": "0.5"}).settle == 0.5
    creds = AnnyTarget.credentials_from_env({"ANNY_API_TOKEN": "tok-anny-test", "ANNY_ORGANIZATION": "42"})
    target = AnnyTarget(base_url="https://b.anny.co", credentials=creds, options={"writes_per_minute": "300"})
    assert target.organization == "42" and target.secrets() == ["tok-anny-test"]
    assert target.default_limits == {"write": 5.0, "read": 400 / 60}
    errors = {"errors": [{"status": "422", "detail": "The number has already been taken.",
                          "source": {"pointer": "/data/attributes/number"}}]}
    reply = Reply(422, {}, json.dumps(errors).encode())
    assert target.error_message(reply) == "/data/attributes/number: The number has already been taken."


# --- end to end through the CLI ---------------------------------------------------------------


def _customer(key: str) -> dict[str, Any]:
    if key == "A":
        return {"external_id": "CUST-A", "email": "Ada.Lovelace@example.com", "name": "Ada Lovelace",
                "company": "Analytical Engines Ltd", "locale": "en-GB",
                "address": {"line1": "12 St James's Square", "line2": None, "city": "London", "region": None,
                            "postal_code": "SW1Y 4JH", "country": "GB"}}
    return {"external_id": "CUST-B", "email": "joerg.mueller@example.de", "name": "Jörg Müller", "locale": "de"}


def _line(title: str, quantity: int | str, price: str, rate: str) -> dict[str, Any]:
    return {"title": title, "quantity": quantity, "unit_price": price, "tax_rate": rate}


# 4 invoices, 2 customers (1 address), 12 items (with twin lines), 3 sends, 2 set-paids.
WORKFLOW = [
    {"external_id": "AN-1", "customer": _customer("A"), "currency": "EUR", "status": "paid", "prices": "net",
     "issue_date": "2026-03-01", "due_date": "2026-03-31", "notes": "Vielen Dank!",
     "lines": [_line("Beratung — März", 3, "10.005", "19"), _line("Hosting 東京", 1, "49.90", "19"),
               _line("Support", 2, "15.00", "7"), _line("Support", 2, "15.00", "7"),
               _line("Rabatt", 1, "-5.00", "19")]},
    {"external_id": "AN-2", "customer": _customer("A"), "currency": "EUR", "status": "sent", "prices": "gross",
     "issue_date": "2026-03-02",
     "lines": [_line("Workshop Köln", 1, "119.00", "19"), _line("Café crème ☕", 4, "3.50", "7"),
               _line("Licence", 1, "12.34", "0")]},
    {"external_id": "AN-3", "customer": _customer("B"), "currency": "JPY", "status": "draft", "prices": "net",
     "lines": [_line("Design 🎨", 2, "1500", "10"), _line("Wartung", 1, "333", "10")]},
    {"external_id": "AN-4", "customer": _customer("B"), "currency": "KWD", "status": "paid", "prices": "net",
     "issue_date": "2026-03-04", "lines": [_line("Support", 5, "1.2345", "0"), _line("Support", 5, "1.2345", "0")]},
]


def write_records(path: Path, records: list[dict[str, Any]]) -> list[Record]:
    return write_input(path, 0, extra_lines=[json.dumps(r, ensure_ascii=False).encode() for r in records])


def call(sb: SandboxServer, method: str, path: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(sb.base_url + path, data=data, method=method, headers={
        "Content-Type": JSONAPI, "Authorization": f"Bearer {SECRET}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def assert_workflow_state(state: dict[str, Any], records: list[Record], *, in_order: bool = False) -> None:
    """Each invoice once with each of its lines once, totals by the money rule, the record's
    status; one customer per e-mail, one address per customer that has one."""
    assert Counter(inv["number"] for inv in state["invoices"]) == Counter(r.external_id for r in records)
    stored = {inv["number"]: inv for inv in state["invoices"]}
    for r in records:
        inv = stored[r.external_id]
        single = "single_net_amount" if r.prices == "net" else "single_gross_amount"
        got = [(i["title"], i["quantity"], Decimal(i["tax_rate"]), Decimal(i[single])) for i in inv["items"]]
        want = [(ln.title, int(ln.quantity), ln.tax_rate, ln.unit_price) for ln in r.lines]
        assert (got if in_order else Counter(got)) == (want if in_order else Counter(want)), r.external_id
        t = r.totals()
        assert [Decimal(inv[k]) for k in ("net_amount", "tax_amount", "total")] == [t.net, t.tax, t.gross]
        assert (inv["status"], inv["currency"]) == (r.status, r.currency)
    emails = Counter(c["email"].lower() for c in state["customers"])
    assert emails == Counter({r.customer.email.lower() for r in records})
    with_address = {c["id"] for c in state["customers"]
                    if any(r.customer.address and r.customer.email.lower() == c["email"].lower() for r in records)}
    assert Counter(a["customer_id"] for a in state["addresses"]) == Counter(with_address)


def wait_for(condition: Callable[[], bool], limit: float = 20) -> None:
    end = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)


# (step, the n-th commit after which the server stops, its answer delivered?, seconds before the
# kill so the resume file has caught up, item concurrency)
CRASH_POINTS = [
    ("customer", 1, False, 0, 2),
    ("address", 1, False, 0, 2),
    ("invoice", 1, False, 0, 2),
    ("invoice", 3, True, 0.6, 1),
    ("item", 4, False, 0, 1),
    ("item", 7, True, 0.6, 3),
    ("send", 1, False, 0, 2),
    ("send", 2, True, 0.6, 2),
    ("set-paid", 1, False, 0, 2),
]


@pytest.mark.parametrize(("step", "count", "answer", "lag", "items_at_once"), CRASH_POINTS,
                         ids=[f"{c[0]}{c[1]}-{'answered' if c[2] else 'lost'}" for c in CRASH_POINTS])
def test_killed_at_each_step_resumes_exactly_once(step: str, count: int, answer: bool, lag: float,
                                                  items_at_once: int, tmp_path: Path) -> None:
    src, out = tmp_path / "in.ndjson", tmp_path / "run"
    records = write_records(src, WORKFLOW)
    with SandboxServer("anny", options={"hold": {"after": step, "count": count, "answer": answer}}) as sb:
        args = upload_args(sb, src, out, "--concurrency", "4", "--item-concurrency", str(items_at_once),
                           "--checkpoint-every", "0.2")
        proc = start_cli(args, sb.env)
        try:
            wait_for(lambda: bool(sb.state()["hold"]["stopped"]) or proc.poll() is not None)
            assert proc.poll() is None, proc.communicate()
            time.sleep(lag)
            assert sb.state()["hold"]["seen"] == count
        finally:
            proc.kill()
            proc.communicate(timeout=10)
        call(sb, "POST", "/_sandbox/hold", {})
        done = cli(args, sb.env, timeout=60)
        assert done.returncode == 0, done.stderr
        assert_exactly_once(sb, out, records)
        assert_workflow_state(sb.state(), records, in_order=items_at_once == 1)


def test_item_concurrency_one_keeps_source_order(tmp_path: Path) -> None:
    src, out = tmp_path / "in.ndjson", tmp_path / "run"
    records = write_input(src, 25, seed=31)
    with SandboxServer("anny", latency_ms=3) as sb:
        done = cli(upload_args(sb, src, out, "--item-concurrency", "1", "--concurrency", "8"), sb.env)
        assert done.returncode == 0, done.stderr
        assert_workflow_state(sb.state(), records, in_order=True)


def test_twin_lines_are_spaced_not_throttled(tmp_path: Path) -> None:
    src, out = tmp_path / "in.ndjson", tmp_path / "run"
    twins = {**WORKFLOW[2], "external_id": "TWINS", "lines": [_line("Stunde", 1, "80", "10")] * 9
             + [_line("Fahrt", 1, "30", "10")]}
    records = write_records(src, [twins])
    with SandboxServer("anny") as sb:
        started = time.monotonic()
        done = cli(upload_args(sb, src, out, "--item-concurrency", "4"), sb.env)
        assert done.returncode == 0, done.stderr
        assert time.monotonic() - started > 2  # 9 identical POSTs at 4 per second
        assert sb.state()["requests"]["throttled"] == 0 and summary(out)["throttled"] == 0
        assert_workflow_state(sb.state(), records)


def test_fractional_quantity_rejected_and_the_rest_created(tmp_path: Path) -> None:
    src, out = tmp_path / "in.ndjson", tmp_path / "run"
    bad = {**WORKFLOW[1], "external_id": "AN-FRACTION",
           "lines": [_line("Beratung", 1, "100", "19"), _line("Stunden", "1.5", "80", "19")]}
    records = write_records(src, [WORKFLOW[0], bad, WORKFLOW[2]])
    with SandboxServer("anny") as sb:
        done = cli(upload_args(sb, src, out), sb.env)
        assert done.returncode == 1, done.stderr
        assert_workflow_state(sb.state(), [r for r in records if r.external_id != "AN-FRACTION"])
    [reason] = read_reasons(out)
    assert (reason["line"], reason["kind"], reason["field"]) == ("2", "rejected", "lines[1].quantity")
    assert "1.5" in reason["message"] and "lines[1].quantity" not in reason["message"]  # in its column


def test_an_earlier_job_is_found_not_repeated(tmp_path: Path) -> None:
    src = tmp_path / "in.ndjson"
    records = write_input(src, 12, seed=32)
    with SandboxServer("anny") as sb:
        assert cli(upload_args(sb, src, tmp_path / "first"), sb.env).returncode == 0
        again = cli(upload_args(sb, src, tmp_path / "second"), sb.env)  # a new job, same input
        assert again.returncode == 0, again.stderr
        assert_exactly_once(sb, tmp_path / "second", records)
        assert_workflow_state(sb.state(), records)
    assert summary(tmp_path / "second")["records"]["existing"] == 12
    by_id = [sorted(read_id_map(tmp_path / run), key=lambda row: row["external_id"]) for run in ("first", "second")]
    actions = [{row.pop("action") for row in rows} for rows in by_id]  # what each job did
    assert actions == [{"created"}, {"existing"}]
    assert by_id[0] == by_id[1]


def test_someone_elses_invoice_number_is_never_changed(tmp_path: Path) -> None:
    src, out = tmp_path / "in.ndjson", tmp_path / "run"
    write_records(src, [WORKFLOW[2]])
    with SandboxServer("anny") as sb:
        call(sb, "POST", "/api/v1/invoices?o=sandbox-org",
             resource("invoices", {"number": "AN-3", "currency": "USD"}))
        done = cli(upload_args(sb, src, out), sb.env)
        assert done.returncode == 1
        [invoice] = sb.state()["invoices"]
        assert (invoice["currency"], invoice["items"]) == ("USD", [])
    [reason] = read_reasons(out)
    assert reason["stage"] == "invoice" and "already exists" in reason["message"]


def test_api_totals_that_differ_are_listed(tmp_path: Path) -> None:
    src, out = tmp_path / "in.ndjson", tmp_path / "run"
    half = {**WORKFLOW[2], "external_id": "HALF", "currency": "EUR", "lines": [_line("Halb", 1, "0.125", "0")]}
    write_records(src, [half, WORKFLOW[0]])
    with SandboxServer("anny", options={"rounding": "half_even"}) as sb:
        assert cli(upload_args(sb, src, out), sb.env).returncode == 0
    mismatches = summary(out)["mismatches"]
    assert mismatches["count"] == 1
    assert mismatches["first"] == [{"external_id": "HALF", "currency": "EUR", "expected_gross": "0.13",
                                    "reported_gross": "0.12"}]


def test_embedded_sandbox_needs_no_setup_and_organization_is_required(tmp_path: Path) -> None:
    src = tmp_path / "in.ndjson"
    write_records(src, WORKFLOW[:2])
    env = {"ANNY_API_TOKEN": "", "ANNY_ORGANIZATION": ""}
    done = cli(["upload", str(src), "--target", "anny", "--out", str(tmp_path / "a"), "--quiet"], env)
    assert done.returncode == 0, done.stderr
    assert summary(tmp_path / "a")["records"]["created"] == 2
    missing = cli(["upload", str(src), "--target", "anny", "--out", str(tmp_path / "b"), "--quiet",
                   "--base-url", "http://127.0.0.1:9"], {"ANNY_API_TOKEN": "tok-anny-test", "ANNY_ORGANIZATION": ""})
    assert missing.returncode == 2 and "organization" in missing.stderr


# --- a scripted man in the middle: lost answers, blind repeats, a killed run's late request ---------


DROP = object()  # a script's answer: close the connection without answering
Answer = tuple[int, bytes, str]  # status, body, content type


class Call:
    """One request the proxy received; ``forward()`` sends it to the sandbox (again, if called
    twice) and returns the sandbox's answer."""

    def __init__(self, proxy: Proxy, method: str, path: str, query: dict[str, str], raw_query: str,
                 body: bytes, headers: dict[str, str]) -> None:
        self.proxy, self.method, self.path, self.query = proxy, method, path, query
        self.raw_query, self.body, self.headers = raw_query, body, headers

    async def forward(self) -> Answer:
        assert self.proxy.session is not None
        url = f"{self.proxy.upstream}{self.path}?{self.raw_query}"
        async with self.proxy.session.request(self.method, url, data=self.body or None,
                                              headers=self.headers) as resp:
            answer = (resp.status, await resp.read(), resp.headers.get("Content-Type", JSONAPI))
        self.proxy.forwarded.append((self.method, self.path, answer[0]))
        return answer


class Proxy:
    """127.0.0.1:0 in front of a sandbox, in its own thread and loop. ``script(call)`` (a
    coroutine run in the proxy's loop) answers each request: by default it forwards it.
    ``seen`` lists what the client sent, ``forwarded`` what reached the sandbox (with its status)."""

    def __init__(self, upstream: str, script: Callable[[Call], Any]) -> None:
        self.upstream, self.script = upstream, script
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        self.forwarded: list[tuple[str, str, int]] = []
        self.session: aiohttp.ClientSession | None = None
        self.base_url = ""
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k in ("Authorization", "Content-Type")}
        call = Call(self, request.method, request.path, dict(request.query), request.query_string,
                    await request.read(), headers)
        self.seen.append((call.method, call.path, call.query))
        answer = await self.script(call)
        if answer is DROP:
            if request.transport is not None:
                request.transport.close()
            return web.Response(status=204)
        status, body, content_type = answer
        return web.Response(status=status, body=body, headers={"Content-Type": content_type})

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, shutdown_timeout=0.5)
        await runner.setup()
        site = TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        self.base_url = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as self.session:
            self._ready.set()
            await self._stop.wait()
        await runner.cleanup()

    def __enter__(self) -> Proxy:
        self._thread.start()
        assert self._ready.wait(15), "the proxy did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def count(self, method: str, suffix: str) -> int:
        return sum(1 for m, path, _ in self.seen if m == method and path.endswith(suffix))


def proxy_args(proxy: Proxy, src: Path, out: Path, *extra: str) -> list[str]:
    return ["upload", str(src), "--target", "anny", "--base-url", proxy.base_url, "--out", str(out),
            "--rate", "100000", "--quiet", *extra]


def server_items(invoice: dict[str, Any]) -> Counter[tuple[str, int, Decimal, Decimal]]:
    """An invoice's items at the server as a multiset of (title, quantity, tax rate, unit price)."""
    single = "single_net_amount" if invoice["calculate_from_net"] else "single_gross_amount"
    return Counter((i["title"], i["quantity"], Decimal(str(i["tax_rate"])), Decimal(str(i[single])))
                   for i in invoice["items"])


def record_lines(record: Record) -> Counter[tuple[str, int, Decimal, Decimal]]:
    return Counter((ln.title, int(ln.quantity), ln.tax_rate, ln.unit_price) for ln in record.lines)


@pytest.mark.parametrize("how", ["lost", "repeated"])
@pytest.mark.parametrize("action", ["send", "set-paid"])
def test_a_transition_is_read_back_never_repeated_blindly(action: str, how: str, tmp_path: Path) -> None:
    """``lost``: the sandbox commits the transition, its answer is dropped (the connection
    closes). ``repeated``: the request reaches the sandbox twice, as when a request given up on
    arrives late, and the client gets the second answer, the sandbox's refusal. Either way the
    client reads the invoice back, finds the step done and goes on: nothing is sent again."""
    src, out = tmp_path / "in.ndjson", tmp_path / "run"
    [record] = write_records(src, [WORKFLOW[0]])  # status paid: send, then set-paid
    hits = []

    async def script(call: Call) -> Any:
        if call.method != "GET" and call.path.endswith("/" + action) and not hits:
            hits.append(await call.forward())
            if how == "lost":
                return DROP
            hits.append(await call.forward())
            return hits[-1]
        return await call.forward()

    with SandboxServer("anny") as sb, Proxy(sb.base_url, script) as proxy:
        done = cli(proxy_args(proxy, src, out), sb.env, timeout=60)
        assert done.returncode == 0, done.stderr
        assert_workflow_state(sb.state(), [record])
        assert_exactly_once(sb, out, [record])
        assert hits[0][0] == 200  # the step was done at the first request
        if how == "repeated":
            assert hits[1][0] == 422  # ... and the repeat refused
        assert proxy.count("POST", "/" + action) == 1  # the client never sent it again
        assert proxy.count("GET", f"/invoices/{sb.state()['invoices'][0]['id']}") >= 1  # it read back


# When the item create a killed run had on its way reaches anny, relative to the resumed run.
LATE = ["in-window", "after-look", "before-send", "after-send"]


@pytest.mark.parametrize("processes", [1, 2])
@pytest.mark.parametrize("when", LATE)
def test_a_killed_runs_item_create_arriving_late_never_leaves_a_wrong_invoice_counted(
        when: str, processes: int, tmp_path: Path) -> None:
    """Run 1 creates AN-1's invoice and first item; its second item create is held by the
    proxy, and run 1 is SIGKILLed while it waits. Run 2 (the same command) resumes; the held
    create is delivered at a moment tied to run 2's progress, never to the clock:

    - ``in-window``: at run 2's first request; run 2 must not look at AN-1 for ``settle`` s
      after its first answer, so it sees the item and completes the invoice exactly;
    - ``after-look``: right after run 2 read AN-1's items: run 2 adds the line again, its
      check before ``send`` finds one item too many: AN-1 fails and stays an unsent draft;
    - ``before-send``: after that check, just before ``send``: the send's answer lists an item
      that was not checked: AN-1 fails (it is sent and wrong at anny), never counted created;
    - ``after-send``: anny refuses an item on a sent invoice: AN-1 is exactly right.

    AN-3 (another record) is created exactly in every case. The same with ``--processes 2``
    (AN-1's shard worker keeps its own settle clock, from its own first answer)."""
    settle = 1.0
    src, out = tmp_path / "in.ndjson", tmp_path / "run"
    records = write_records(src, [WORKFLOW[0], WORKFLOW[2]])
    an1 = records[0]
    phase = [1]
    held: list[Call] = []
    is_held, release = threading.Event(), asyncio.Event()
    late: list[Answer] = []
    times: dict[str, float] = {}

    def look(call: Call) -> bool:
        return (call.method == "GET" and call.query.get("include") == "items" and bool(held)
                and (call.query.get("filter[number]") == "AN-1" or call.path.endswith("/" + invoice_of(held[0]))))

    async def script(call: Call) -> Any:
        if phase[0] == 1:
            if call.path.endswith("/items") and b"Hosting" in call.body and not held:
                held.append(call)
                is_held.set()
                await release.wait()  # run 1 is killed meanwhile: this answer never goes anywhere
                return DROP
            return await call.forward()
        invoice_id = invoice_of(held[0])
        if when == "in-window" and not late:
            late.append(await held[0].forward())
            answer = await call.forward()
            times["first answer"] = time.monotonic()
            return answer
        if when == "in-window" and look(call):
            times.setdefault("look", time.monotonic())
        if when == "after-look" and look(call) and not late:
            answer = await call.forward()
            late.append(await held[0].forward())
            return answer
        if call.path.endswith(f"/invoices/{invoice_id}/send") and not late:
            if when == "before-send":
                late.append(await held[0].forward())
                return await call.forward()
            if when == "after-send":
                answer = await call.forward()
                late.append(await held[0].forward())
                return answer
        return await call.forward()

    with SandboxServer("anny") as sb, Proxy(sb.base_url, script) as proxy:
        args = proxy_args(proxy, src, out, "--concurrency", "1", "--item-concurrency", "1",
                          "--checkpoint-every", "0.2", "--option", f"settle={settle}", "--processes", str(processes))
        first = start_cli(args, sb.env)
        try:
            assert is_held.wait(30), "run 1 never sent the second item"
        finally:
            first.kill()
            first.communicate(timeout=10)
        phase[0] = 2
        done = cli(args, sb.env, timeout=60)
        assert proxy._loop is not None
        proxy._loop.call_soon_threadsafe(release.set)
        state = sb.state()
        assert len(late) == 1, "the held create was never delivered"
        invoices = {inv["number"]: inv for inv in state["invoices"]}
        assert sorted(invoices) == ["AN-1", "AN-3"]  # each invoice once
        assert server_items(invoices["AN-3"]) == record_lines(records[1])
        assert invoices["AN-3"]["status"] == "draft"
        created = {row["external_id"]: row["invoice_id"] for row in read_id_map(out)}
        reasons = read_reasons(out)
        extra = Counter({("Hosting 東京", 1, Decimal("19"), Decimal("49.90")): 1})
        if when in ("in-window", "after-send"):
            assert done.returncode == 0, done.stderr
            assert_workflow_state(state, records)
            assert_exactly_once(sb, out, records)
            assert reasons == []
            if when == "in-window":  # run 2 waited out the window before it looked
                assert late[0][0] == 201 and times["look"] - times["first answer"] >= settle
            else:
                assert late[0][0] == 422  # anny takes no item on a sent invoice
        else:
            assert done.returncode == 1, done.stderr
            assert late[0][0] == 201
            assert server_items(invoices["AN-1"]) == record_lines(an1) + extra
            # not sent when caught before send; sent (and never set paid) when it came in between
            assert invoices["AN-1"]["status"] == ("draft" if when == "after-look" else "sent")
            assert set(created) == {"AN-3"} and created["AN-3"] == invoices["AN-3"]["id"]
            [reason] = reasons
            assert (reason["external_id"], reason["kind"], reason["stage"]) == ("AN-1", "failed", "item")
            assert "1 item(s) beyond the record's lines" in reason["message"]
            counts = summary(out)["records"]
            assert (counts["created"], counts["failed"]) == (1, 1), counts


# The creates a killed run may have on their way, by the path its request goes to.
LATE_CREATES = ["customers", "addresses", "invoices", "items"]


@pytest.mark.parametrize("processes", [1, 2])
@pytest.mark.parametrize("create", LATE_CREATES)
def test_a_killed_runs_create_lands_amid_the_resumed_runs_work_and_is_found(
        create: str, processes: int, tmp_path: Path) -> None:
    """Run 1 is SIGKILLed while the proxy holds its first ``POST /<create>``; the held request
    is released into run 2 by the adversary scenario's rule for anny (tests/test_adversary.py,
    _scenario): at a moment drawn in [0, 2) s after run 2's first answer (anny's contract,
    with ``--option settle=2``), or right after run 2 read back what the create writes (the
    invoice by id or number, the customer by e-mail: tests/anny_reads) if that came first,
    which only a client reading back inside its settle window meets. So it lands while run 2
    is at work (some of run 2's requests landed before it, the proxy's log says which), at
    its moment: run 2 must find it and finish exactly once, one customer per e-mail and one
    address per customer included."""
    src, out = tmp_path / "in.ndjson", tmp_path / "run"
    records = write_input(src, 6, seed=23)
    with SandboxServer("anny") as sb, HostileProxy(sb.base_url, seed=1, rates={}, late_lands_first=True,
                                                   read_back=AnnyObjects(), settle=2.0) as proxy:
        args = upload_args(sb, src, out, "--concurrency", "2", "--checkpoint-every", "0.02",
                           "--processes", str(processes), "--option", "settle=2", via=proxy)
        hold = proxy.hold_when(lambda method, path, body: method == "POST" and path == f"/api/v1/{create}")
        kill_when(sb, args, hold.reached.is_set, what=f"run 1's first POST /{create} held")
        proxy.release_after(hold, 4)  # with settle, k is no trigger: the drawn moment is
        done = cli(args, sb.env, timeout=120)
        proxy.release_all()
        proxy.drain()
        assert done.returncode == 0, done.stderr
        [late] = proxy.late_log
        assert (late.hold, late.landed, late.status) == (hold.number, True, 201), late
        assert late.trigger == "time" and late.landed_after, late  # run 2 had requests answered before it landed
        print(f"{create}, {processes} process(es): {late}")
        assert_workflow_state(sb.state(), records)
        assert_exactly_once(sb, out, records)
    assert read_reasons(out) == []


def invoice_of(item_call: Call) -> str:
    """The invoice an item create goes on (its ``relationships.document``)."""
    return str(json.loads(item_call.body)["data"]["relationships"]["document"]["data"]["id"])


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_soak_hostile_proxy_and_sigkills(seed: int, tmp_path: Path) -> None:
    """150 invoices, 10 SIGKILLs (each while the run waits for its k-th request, held at the
    proxy: progress, not time), through a proxy (tests/hostile_proxy.py) that, drawn per request
    from the seed, the request's identity and its attempt number, answers 429 or 503, resets,
    delays 50-600 ms before forwarding (so a killed run's request lands late), or forwards and
    drops the answer. Every invoice, item and status is audited at the sandbox."""
    src, out = tmp_path / "in.ndjson", tmp_path / "run"
    records = write_input(src, 150, seed=seed)
    rates = {"throttle": 0.04, "unavailable": 0.04, "reset": 0.04, "drop_answer": 0.04, "delay": 0.14}
    with SandboxServer("anny", latency_ms=5) as sb, HostileProxy(sb.base_url, seed=seed, rates=rates) as proxy:
        args = upload_args(sb, src, out, "--retries", "12", "--concurrency", "4", via=proxy)
        kills = kill_until_done(sb, proxy, lambda rng: args, kills=10, seed=seed, records=len(records), timeout=300)
        assert kills.done.returncode == 0, kills.done.stderr
        assert kills.delivered == 10, f"only {kills.delivered} of 10 kills landed (exits {kills.exits})"
        fates = proxy.stats()["fates"]
        assert all(fates.get(fault) for fault in rates), fates
        assert_workflow_state(sb.state(), records)
        assert_exactly_once(sb, out, records)
    assert read_reasons(out) == []
