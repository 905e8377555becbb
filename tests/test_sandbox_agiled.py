"""The sandbox framework and its Agiled dialect, over real sockets on 127.0.0.1 port 0."""

from __future__ import annotations

import ast
import asyncio
import json as json_module
import pathlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest

import bulk.sandbox
from bulk.sandbox import (
    RunningSandbox,
    SandboxConfig,
    SandboxConfigError,
    build_app,
    serve,
)
from bulk.sandbox.faults import RateLimiter
from bulk.sandbox.idempotency import IdempotencyStore, Verdict, parse_key

pytestmark = pytest.mark.anyio

TOKEN, READONLY = "full-secret", "read-secret"
API = "/public/v1"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Client:
    """A thin aiohttp client: (status, json body, headers) per call, bounded in time."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session

    async def call(self, method: str, path: str, *, json: Any = None, data: str | None = None,
                   key: str | None = None, headers: dict[str, str] | None = None,
                   time_limit: float | None = None) -> tuple[int, Any, Any]:
        hdrs = dict(AUTH if headers is None else headers)
        if key is not None:
            hdrs["Idempotency-Key"] = key
        if data is not None:
            hdrs["Content-Type"] = "application/json"
        kwargs: dict[str, Any] = {}
        if time_limit is not None:
            kwargs["timeout"] = aiohttp.ClientTimeout(total=time_limit)
        async with self.session.request(method, path, json=json, data=data, headers=hdrs,
                                        **kwargs) as resp:
            text = await resp.text()
            try:
                body = json_module.loads(text)
            except ValueError:
                body = text  # not every answer is JSON (aiohttp's own 404 at the root of "all")
            return resp.status, body, resp.headers

    async def get(self, path: str, **kwargs: Any) -> tuple[int, Any, Any]:
        """GET ``/public/v1`` + ``path``."""
        return await self.call("GET", API + path, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> tuple[int, Any, Any]:
        """POST ``/public/v1`` + ``path``."""
        return await self.call("POST", API + path, **kwargs)


@asynccontextmanager
async def running(target: str = "agiled",
                  **config: Any) -> AsyncIterator[tuple[RunningSandbox, Client]]:
    config.setdefault("token", TOKEN)
    config.setdefault("readonly_token", READONLY)
    async with serve(target, SandboxConfig(**config)) as sandbox:
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(sandbox.base_url, timeout=timeout) as session:
            yield sandbox, Client(session)


async def make_contact(client: Client, email: str = "ann@example.com") -> int:
    status, body, _ = await client.post("/contacts", json={"email": email})
    assert status == 201, body
    return int(body["data"]["id"])


def invoice(contact_id: int, number: str = "INV-1", **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "invoice_number": number, "contact_id": contact_id, "currency": "EUR",
        "status": "sent", "issue_date": "2025-01-31", "due_date": "2025-02-28",
        "items": [{"name": "Widget", "quantity": "2", "unit_price": "10.00", "tax_rate": "7"}],
    }
    body.update(overrides)
    return body


# --- auth, routes ----------------------------------------------------------------------


async def test_auth() -> None:
    async with running() as (_, client):
        assert (await client.get("/me", headers={}))[:2] == (
            401, {"error": "Unauthorized."})
        wrong = {"Authorization": "Bearer nope"}
        assert (await client.get("/me", headers=wrong))[0] == 401
        basic = {"Authorization": f"Basic {TOKEN}"}
        assert (await client.get("/me", headers=basic))[0] == 401
        status, body, _ = await client.get("/me")
        assert (status, body["data"]["organization_id"]) == (200, 1)
        readonly = {"Authorization": f"Bearer {READONLY}"}
        assert (await client.get("/me", headers=readonly))[0] == 200
        assert (await client.post("/contacts", json={"email": "a@b.co"},
                                  headers=readonly))[:2] == (403, {"error": "Forbidden."})
        assert (await client.get("/nowhere"))[:2] == (404, {"error": "Not Found."})
        status, _, headers = await client.call("DELETE", f"{API}/me")
        assert status == 405 and "GET" in headers["Allow"]


async def test_any_token_accepted_when_none_configured() -> None:
    async with running(token=None, readonly_token=None) as (_, client):
        assert (await client.get("/me", headers={"Authorization": "Bearer x"}))[0] == 200
        assert (await client.get("/me", headers={"Authorization": "Bearer "}))[0] == 401


# --- contacts ----------------------------------------------------------------------------


async def test_contact_create_and_lookup() -> None:
    async with running() as (sandbox, client):
        status, body, _ = await client.post("/contacts", json={
            "email": "Ann@Example.com", "first_name": "Ann", "crm_id": 7,
            "address": {"line1": "1 Main St", "country": "DE"}})
        assert status == 201
        contact = body["data"]
        assert contact["id"] == 1 and contact["last_name"] is None
        assert contact["address"]["postal_code"] is None and contact["address"]["country"] == "DE"
        status, found, _ = await client.get("/contacts?email=ann@EXAMPLE.com")
        assert status == 200 and found["data"] == [contact]
        assert found["meta"] == {"current_page": 1, "last_page": 1, "per_page": 25, "total": 1}
        status, none, _ = await client.get("/contacts?email=bob@example.com")
        assert none["data"] == [] and none["meta"]["total"] == 0
        state = await sandbox.state()
        assert state["contacts"][0]["extra"] == {"crm_id": 7}

        for bad, field in [({}, "email"), ({"email": "not-an-email"}, "email"),
                           ({"email": "a@b.co", "address": {"zip": "1"}}, "address.zip"),
                           ({"email": "a@b.co", "first_name": 5}, "first_name")]:
            status, body, _ = await client.post("/contacts", json=bad)
            assert status == 422 and body["error"] == "The given data was invalid.", bad
            assert field in body["errors"], body
        assert len((await sandbox.state())["contacts"]) == 1


async def test_pagination() -> None:
    async with running() as (_, client):
        for n in range(5):
            await make_contact(client, f"c{n}@example.com")
        _, body, _ = await client.get("/contacts?page=2&per_page=2")
        assert [c["id"] for c in body["data"]] == [3, 4]
        assert body["meta"] == {"current_page": 2, "last_page": 3, "per_page": 2, "total": 5}
        _, body, _ = await client.get("/contacts?per_page=1000")
        assert body["meta"]["per_page"] == 100
        assert (await client.get("/contacts?page=x"))[0] == 422


# --- invoices ----------------------------------------------------------------------------


def _item(quantity: str, price: str, rate: str) -> dict[str, str]:
    return {"name": "Line", "quantity": quantity, "unit_price": price, "tax_rate": rate}


@pytest.mark.parametrize("currency, inclusive, items, lines, sums", [
    # net prices, half-up on the cent (1.005 -> 1.01), a negative (discount) line
    ("EUR", False, [_item("3", "0.335", "19"), _item("2", "10.00", "7"), _item("1", "-5", "19")],
     [("1.01", "0.19", "1.20"), ("20.00", "1.40", "21.40"), ("-5.00", "-0.95", "-5.95")],
     ("16.01", "0.64", "16.65")),
    # half-up is away from zero for negatives
    ("EUR", False, [_item("1", "-0.125", "0")], [("-0.13", "0.00", "-0.13")],
     ("-0.13", "0.00", "-0.13")),
    # gross prices: net = round(gross * 100 / (100 + rate)), tax = gross - net
    ("EUR", True, [_item("1", "10.00", "19"), _item("3", "0.99", "7")],
     [("8.40", "1.60", "10.00"), ("2.78", "0.19", "2.97")], ("11.18", "1.79", "12.97")),
    ("JPY", False, [_item("3", "333.5", "10")], [("1001", "100", "1101")], ("1001", "100", "1101")),
    ("KWD", False, [_item("1", "1.2345", "5")], [("1.235", "0.062", "1.297")],
     ("1.235", "0.062", "1.297")),
])
async def test_invoice_totals(currency: str, inclusive: bool, items: list[dict[str, str]],
                              lines: list[tuple[str, str, str]],
                              sums: tuple[str, str, str]) -> None:
    async with running() as (sandbox, client):
        contact_id = await make_contact(client)
        body = invoice(contact_id, currency=currency, tax_inclusive=inclusive, items=items)
        status, created, _ = await client.post("/invoices", json=body)
        assert status == 201, created
        data = created["data"]
        assert [(i["net"], i["tax"], i["gross"]) for i in data["items"]] == lines
        assert (data["sub_total"], data["tax_total"], data["total"]) == sums
        assert data["currency"] == currency and data["tax_inclusive"] is inclusive
        assert (await client.get(f"/invoices/{data['id']}"))[1] == {"data": data}
        state = await sandbox.state()
        assert state["invoices"][0]["total"] == sums[2]


async def test_invoice_numbers_are_read_exactly_and_echoed_normalised() -> None:
    async with running() as (sandbox, client):
        contact_id = await make_contact(client)
        # 1.005 as a float is 1.00499999..., which would round to 1.00.
        raw = ('{"invoice_number": "INV-9", "contact_id": CONTACT, "currency": "EUR",'
               ' "status": "draft",'
               ' "items": [{"name": "x", "quantity": 1, "unit_price": 1.005, "tax_rate": 0},'
               ' {"name": "y", "quantity": "2.50", "unit_price": "1E2", "tax_rate": "0"}],'
               ' "custom_field": 12.30}').replace("CONTACT", str(contact_id))
        status, body, _ = await client.post("/invoices", data=raw)
        assert status == 422 and "items.1.unit_price" in body["errors"]  # no exponent in strings
        raw = raw.replace('"1E2"', '"100"')
        status, body, _ = await client.post("/invoices", data=raw)
        assert status == 201, body
        first, second = body["data"]["items"]
        assert (first["unit_price"], first["net"]) == ("1.005", "1.01")
        assert (second["quantity"], second["unit_price"], second["net"]) == ("2.5", "100", "250.00")
        assert body["data"]["issue_date"] is None and body["data"]["status"] == "draft"
        assert (await sandbox.state())["invoices"][0]["extra"] == {"custom_field": "12.30"}


async def test_invoice_lookup_by_number_and_status() -> None:
    async with running() as (_, client):
        contact_id = await make_contact(client)
        for number, status in [("A-1", "sent"), ("A-2", "paid"), ("A-3", "sent")]:
            assert (await client.post("/invoices",
                                      json=invoice(contact_id, number, status=status)))[0] == 201
        _, body, _ = await client.get("/invoices?invoice_number=A-2")
        assert [v["invoice_number"] for v in body["data"]] == ["A-2"]
        _, body, _ = await client.get("/invoices?status=sent")
        assert [v["invoice_number"] for v in body["data"]] == ["A-1", "A-3"]
        _, body, _ = await client.get("/invoices?invoice_number=nope")
        assert body["data"] == [] and body["meta"]["total"] == 0
        assert (await client.get("/invoices/999"))[:2] == (404, {"error": "Not Found."})
        assert (await client.get("/invoices/abc"))[0] == 404


def _with_item(**fields: Any) -> dict[str, Any]:
    return {"items": [{**_item("1", "1", "0"), **fields}]}


@pytest.mark.parametrize("overrides, field", [
    ({"invoice_number": None}, "invoice_number"),
    ({"invoice_number": 17}, "invoice_number"),
    ({"invoice_number": "N" * 101}, "invoice_number"),
    ({"contact_id": 999}, "contact_id"),
    ({"contact_id": "1"}, "contact_id"),
    ({"currency": "eur"}, "currency"),
    ({"currency": None}, "currency"),
    ({"status": "void"}, "status"),
    ({"issue_date": None}, "issue_date"),  # required when status is not draft
    ({"issue_date": "2025-02-30"}, "issue_date"),
    ({"issue_date": "31/01/2025"}, "issue_date"),
    ({"due_date": "2025-01-01"}, "due_date"),  # before issue_date
    ({"tax_inclusive": "yes"}, "tax_inclusive"),
    ({"items": []}, "items"),
    ({"items": None}, "items"),
    ({"items": ["x"]}, "items.0"),
    (_with_item(name=""), "items.0.name"),
    (_with_item(name="n" * 186), "items.0.name"),
    (_with_item(quantity="0"), "items.0.quantity"),
    (_with_item(quantity="abc"), "items.0.quantity"),
    (_with_item(quantity=True), "items.0.quantity"),
    (_with_item(quantity="0.00000000001"), "items.0.quantity"),
    (_with_item(unit_price="1000000000000"), "items.0.unit_price"),
    (_with_item(unit_price=None), "items.0.unit_price"),
    (_with_item(tax_rate="-1"), "items.0.tax_rate"),
    (_with_item(discount="5"), "items.0.discount"),
])
async def test_invoice_validation(overrides: dict[str, Any], field: str) -> None:
    async with running() as (sandbox, client):
        contact_id = await make_contact(client)
        body = {**invoice(contact_id), **overrides}
        status, body, _ = await client.post("/invoices", json=body, key="k-422")
        assert status == 422, body
        assert body["error"] == "The given data was invalid." and field in body["errors"], body
        assert all(isinstance(m, str) for m in body["errors"][field])
        state = await sandbox.state()
        assert state["invoices"] == [] and state["idempotency_keys"] == 0


async def test_malformed_and_non_object_bodies() -> None:
    async with running() as (_, client):
        for raw in ["{", "", '{"a": NaN}', "\xff"]:
            assert (await client.post("/invoices", data=raw))[:2] == (
                400, {"error": "Malformed JSON."}), raw
        status, body, _ = await client.post("/invoices", json=[1])
        assert status == 422 and "body" in body["errors"]


async def test_invoice_number_taken() -> None:
    async with running() as (sandbox, client):
        contact_id = await make_contact(client)
        assert (await client.post("/invoices", json=invoice(contact_id), key="a"))[0] == 201
        status, body, _ = await client.post("/invoices", json=invoice(contact_id), key="b")
        assert status == 422
        assert body["errors"] == {"invoice_number": ["The invoice number has already been taken."]}
        assert len((await sandbox.state())["invoices"]) == 1


# --- idempotency -------------------------------------------------------------------------


async def test_idempotent_replay() -> None:
    async with running() as (sandbox, client):
        contact_id = await make_contact(client)
        body = invoice(contact_id)
        first = await client.post("/invoices", json=body, key="inv-1")
        # Same key quoted (RFC 8941 sf-string), same body in another key order and spacing.
        reordered = dict(reversed(list(body.items())))
        again = await client.post("/invoices", json=reordered, key='"inv-1"')
        assert first[0] == again[0] == 201
        assert first[1] == again[1] and first[1]["data"]["id"] == 1
        state = await sandbox.state()
        assert len(state["invoices"]) == 1 and state["idempotency_keys"] == 1

        status, conflict, _ = await client.call(
            "POST", f"{API}/invoices", json=invoice(contact_id, "INV-2"), key="inv-1")
        assert (status, conflict) == (
            409, {"error": "Idempotency key already used with a different request."})
        assert len((await sandbox.state())["invoices"]) == 1
        # The key is scoped by path: the same key on contacts is a different slot.
        assert (await client.post("/contacts", json={"email": "z@z.io"},
                                  key="inv-1"))[0] == 201


async def test_failed_attempt_does_not_use_up_the_key() -> None:
    async with running() as (sandbox, client):
        contact_id = await make_contact(client)
        bad = invoice(contact_id, currency="euro")
        assert (await client.post("/invoices", json=bad, key="k"))[0] == 422
        assert (await client.post("/invoices", json=invoice(contact_id), key="k"))[0] == 201
        for header in ["", "a b", '"open', "x" * 256]:
            status, body, _ = await client.post("/invoices",
                                                json=invoice(contact_id), key=header)
            assert (status, body) == (400, {"error": "Invalid Idempotency-Key."}), header
        assert len((await sandbox.state())["invoices"]) == 1


async def test_same_key_in_flight_is_409() -> None:
    async with running(latency_ms=400) as (sandbox, client):
        contact_id = await make_contact(client)
        body = invoice(contact_id)
        first = asyncio.create_task(client.post("/invoices", json=body, key="slow"))
        await asyncio.sleep(0.1)
        status, conflict, _ = await client.post("/invoices", json=body, key="slow")
        assert (status, conflict) == (
            409, {"error": "A request with this Idempotency-Key is already in progress."})
        assert (await first)[0] == 201
        replay = await client.post("/invoices", json=body, key="slow")
        assert replay[0] == 201 and replay[1]["data"]["id"] == 1
        assert len((await sandbox.state())["invoices"]) == 1


def test_idempotency_keys_expire_after_30_days() -> None:
    now = [1000.0]
    store = IdempotencyStore(clock=lambda: now[0])
    claim = store.begin(("org", "POST", "/x", "k"), b"fp")
    assert claim.verdict is Verdict.PROCEED
    assert store.begin(("org", "POST", "/x", "k"), b"fp").verdict is Verdict.IN_FLIGHT
    store.finish(claim, 201, b"{}", "application/json")
    assert store.begin(("org", "POST", "/x", "k"), b"fp").verdict is Verdict.REPLAY
    assert store.begin(("org", "POST", "/x", "k"), b"other").verdict is Verdict.MISMATCH
    now[0] += 30 * 86400 - 1
    assert len(store) == 1
    now[0] += 2
    assert len(store) == 0
    assert store.begin(("org", "POST", "/x", "k"), b"other").verdict is Verdict.PROCEED


@pytest.mark.parametrize("raw, key", [
    ("abc", "abc"), ('"abc"', "abc"), (' "a\\"b" ', 'a"b'),
    ("inv-external-1001", "inv-external-1001"),
    ("", None), ("a b", None), ('"open', None), ('a"b', None), ('"é"', None), ("x" * 256, None),
])
def test_parse_idempotency_key(raw: str, key: str | None) -> None:
    assert parse_key(raw) == key


# --- rate limits -------------------------------------------------------------------------


async def test_write_rate_limit_answers_429_with_retry_after() -> None:
    async with running(rate_limit=2) as (sandbox, client):
        for n in range(2):
            await make_contact(client, f"c{n}@example.com")
        status, body, headers = await client.post("/contacts", json={"email": "x@y.io"})
        assert (status, body) == (429, {"error": "Too Many Attempts."})
        assert headers["Retry-After"] == "1"
        assert (await client.get("/me"))[0] == 200  # reads have their own bucket
        state = await sandbox.state()
        assert state["requests"]["throttled"] == 1 and len(state["contacts"]) == 2


async def test_read_rate_limit_is_per_token() -> None:
    async with running(read_rate_limit=1) as (_, client):
        assert (await client.get("/me"))[0] == 200
        assert (await client.get("/me"))[0] == 429
        readonly = {"Authorization": f"Bearer {READONLY}"}
        assert (await client.get("/me", headers=readonly))[0] == 200


def test_token_bucket_refill_and_retry_after() -> None:
    now = [0.0]
    limiter = RateLimiter(clock=lambda: now[0])
    limiter.configure(write_rate=0.5, read_rate=None, burst=None)  # capacity max(1, 0.5) = 1
    assert limiter.acquire("t", True) == 0
    assert limiter.acquire("t", True) == 2  # (1 - 0) / 0.5
    assert limiter.acquire("other", True) == 0  # buckets are per credential
    assert limiter.acquire("t", False) == 0  # reads unlimited
    now[0] = 1.0
    assert limiter.acquire("t", True) == 1  # half a token: 1 more second
    now[0] = 2.0
    assert limiter.acquire("t", True) == 0
    limiter.configure(write_rate=10, read_rate=None, burst=3)
    assert [limiter.acquire("t", True) for _ in range(4)] == [0, 0, 0, 1]


# --- faults ------------------------------------------------------------------------------


async def test_fail_fault_answers_500_and_stores_nothing() -> None:
    async with running(fail_rate=1) as (sandbox, client):
        await sandbox.set_faults(fail_rate=0)
        contact_id = await make_contact(client)
        await sandbox.set_faults(fail_rate=1)
        status, body, _ = await client.post("/invoices", json=invoice(contact_id), key="f")
        assert (status, body) == (500, {"error": "Server Error."})
        state = await sandbox.state()
        assert state["invoices"] == [] and state["requests"]["by_status"]["500"] == 1
        await sandbox.set_faults(fail_rate=0)
        assert (await client.post("/invoices", json=invoice(contact_id), key="f"))[0] == 201


async def test_drop_fault_closes_the_connection_before_handling() -> None:
    async with running() as (sandbox, client):
        contact_id = await make_contact(client)
        await sandbox.set_faults(drop_rate=1)
        with pytest.raises(aiohttp.ClientConnectionError):
            await client.post("/invoices", json=invoice(contact_id), key="d")
        state = await sandbox.state()
        assert state["invoices"] == [] and state["requests"]["dropped"] == 1
        await sandbox.set_faults(drop_rate=0)
        assert (await client.post("/invoices", json=invoice(contact_id), key="d"))[0] == 201


async def test_lose_fault_commits_then_drops_and_the_key_recovers_it() -> None:
    async with running() as (sandbox, client):
        contact_id = await make_contact(client)
        await sandbox.set_faults(lose_rate=1)
        assert (await client.get("/me"))[0] == 200  # reads are never lost
        with pytest.raises(aiohttp.ClientConnectionError):
            await client.post("/invoices", json=invoice(contact_id), key="lost")
        state = await sandbox.state()
        assert len(state["invoices"]) == 1 and state["requests"]["lost"] == 1
        await sandbox.set_faults(lose_rate=0)
        status, body, _ = await client.post("/invoices", json=invoice(contact_id),
                                            key="lost")
        assert status == 201 and body["data"]["id"] == state["invoices"][0]["id"]
        assert len((await sandbox.state())["invoices"]) == 1


async def test_slow_fault_trips_the_client_timeout() -> None:
    async with running(slow_rate=1, slow_ms=1500) as (sandbox, client):
        with pytest.raises(asyncio.TimeoutError):
            await client.get("/me", time_limit=0.2)
        await sandbox.set_faults(slow_rate=0)
        contact_id = await make_contact(client)
        await sandbox.set_faults(slow_rate=1)
        with pytest.raises(asyncio.TimeoutError):
            await client.post("/invoices", json=invoice(contact_id), key="s",
                              time_limit=0.2)
        await sandbox.set_faults(slow_rate=0)
        # The first attempt is still being handled: its key is in flight.
        assert (await client.post("/invoices", json=invoice(contact_id),
                                  key="s"))[0] == 409


async def test_faults_are_seeded() -> None:
    async def outcomes() -> list[int]:
        async with running(fail_rate=0.5, seed=42) as (_, client):
            return [(await client.get("/me"))[0] for _ in range(20)]

    first = await outcomes()
    assert first == await outcomes() and {200, 500} == set(first)


# --- control endpoints, registry -------------------------------------------------------


async def test_control_endpoints() -> None:
    async with running(fail_rate=1) as (sandbox, client):
        # No auth, no faults, not counted.
        status, state, _ = await client.call("GET", "/_sandbox/state", headers={})
        assert status == 200 and state["target"] == "agiled" and state["requests"]["total"] == 0
        status, body, _ = await client.call("POST", "/_sandbox/faults", json={"fail_rate": 2},
                                            headers={})
        assert status == 400 and "fail_rate" in body["error"]
        status, body, _ = await client.call("POST", "/_sandbox/faults", json={"typo": 1},
                                            headers={})
        assert status == 400 and "typo" in body["error"]
        changes = {"fail_rate": 0, "latency_ms": 1, "rate_limit": 50}
        status, body, _ = await client.call("POST", "/_sandbox/faults", json=changes, headers={})
        assert status == 200 and body["fail_rate"] == 0 and body["rate_limit"] == 50
        await make_contact(client)
        state = (await client.call("GET", "/_sandbox/state", headers={}))[1]
        assert len(state["contacts"]) == 1 and state["requests"]["by_status"] == {"201": 1}
        assert state == await sandbox.state()
        status, state, _ = await client.call("POST", "/_sandbox/reset", headers={})
        assert status == 200 and state["contacts"] == [] and state["requests"]["total"] == 0
        assert state["faults"]["rate_limit"] == 50  # settings survive a reset


async def test_all_targets_are_mounted_under_prefixes() -> None:
    async with running("all") as (sandbox, client):
        assert (await client.call("GET", f"/agiled{API}/me"))[0] == 200
        assert (await client.get("/me"))[0] == 404
        await make_contact_at(client, "/agiled")
        status, state, _ = await client.call("GET", "/_sandbox/state", headers={})
        assert status == 200 and state["target"] == "all"
        assert len(state["targets"]["agiled"]["contacts"]) == 1
        assert state == await sandbox.state()
        assert (await client.call("GET", "/agiled/_sandbox/state"))[1] == state["targets"]["agiled"]
        await client.call("POST", "/_sandbox/faults", json={"fail_rate": 1}, headers={})
        assert (await client.call("GET", f"/agiled{API}/me"))[0] == 500
        await client.call("POST", "/_sandbox/reset", headers={})
        assert (await sandbox.state())["targets"]["agiled"]["contacts"] == []


async def make_contact_at(client: Client, prefix: str) -> None:
    status, _, _ = await client.call("POST", f"{prefix}{API}/contacts", json={"email": "a@b.co"})
    assert status == 201


def test_unknown_target_lists_the_available_ones() -> None:
    with pytest.raises(ValueError, match="agiled") as info:
        build_app("nosuch")
    assert isinstance(info.value, SandboxConfigError)


@pytest.mark.parametrize("settings", [
    {"fail_rate": 1.5}, {"drop_rate": -0.1}, {"latency_ms": -1}, {"rate_limit": 0},
    {"burst": 0.5}, {"token": ""}, {"token": "same", "readonly_token": "same"},
    {"seed": "x"}, {"slow_rate": float("nan")},
])
def test_config_is_validated(settings: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        SandboxConfig(**settings)


async def test_run_forever_reports_ready_and_stops_on_cancel() -> None:
    urls: list[str] = []
    forever = bulk.sandbox.run_forever("agiled", SandboxConfig(), ready=urls.append)
    task = asyncio.create_task(forever)
    for _ in range(100):
        if urls:
            break
        await asyncio.sleep(0.01)
    async with (aiohttp.ClientSession() as session,
                session.get(f"{urls[0]}{API}/me", headers=AUTH) as resp):
        assert resp.status == 200
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectionError):
            await session.get(f"{urls[0]}{API}/me")


def test_public_names_are_pinned() -> None:
    assert sorted(bulk.sandbox.__all__) == [
        "DIALECTS", "RunningSandbox", "SandboxConfig", "SandboxConfigError", "available",
        "build_app", "run_forever", "serve"]
    assert set(bulk.sandbox.DIALECTS) == {"agiled", "anny", "chargeover", "coperniq"}


def test_sandbox_does_not_import_the_client_side() -> None:
    forbidden = ("bulk.targets", "bulk.records", "bulk.money")
    package = pathlib.Path(bulk.sandbox.__file__).parent
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not [n for n in names if n.startswith(forbidden)], path
