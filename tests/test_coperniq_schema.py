"""The Coperniq sandbox refuses what the vendor's published schema refuses (bulk/sandbox/_coperniq_schema.py).

Over real HTTP: a body the hand rules (coperniq_rules, coperniq_refs) let through but the document's
request-body schema forbids is a 400 naming the field's JSON path, and nothing is made; valid bodies,
with exact decimal amounts, still pass. The document ships inside the package and is the fixture's
document, unchanged.
"""

from __future__ import annotations

import json
import tomllib
import urllib.error
import urllib.request
from decimal import Decimal
from typing import Any

import pytest
import yaml
from harness import REPO, SandboxServer
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from bulk.sandbox._coperniq_schema import _URI, DOCUMENT, OPERATIONS, _Validator, load_document, request_schemas
from bulk.sandbox.coperniq_rules import Invalid

LINE = {"catalogItemId": 7001, "quantity": 2, "unitCost": 1, "unitPrice": 2}
LINE2 = {"catalogItemId": 7002, "quantity": 1, "unitCost": 3, "unitPrice": 4}
INVOICE = {"recordId": 20_001, "calculationMethod": "LINE_ITEMS", "lineItems": [LINE]}
ITEM = {"name": "Panel", "type": "PRODUCT", "category": "PV_MODULE", "cost": 1, "price": 2, "sku": "SCHEMA-1"}
ACCOUNT = {"title": "Schema Co", "address": ["1 Main St"]}


def send(sb: SandboxServer, method: str, path: str, body: Any) -> tuple[int, Any]:
    """(status, parsed answer); ``body`` bytes go out as they are (exact decimal text)."""
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(sb.base_url + path, data=data, method=method, headers={
        "Content-Type": "application/json", "x-api-key": sb.env["COPERNIQ_API_KEY"]})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            raw, status = resp.read(), int(resp.status)
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), int(exc.code)
    return status, json.loads(raw, parse_float=Decimal) if raw else None


def counts(sb: SandboxServer) -> tuple[int, int, int]:
    state = sb.state()
    return len(state["invoices"]), len(state["accounts"]), len(state["catalog_items"])


# Each body passes every hand rule (they do not look at these fields' types) and breaks the schema.
REFUSED = [
    pytest.param("POST", "/invoices", {**INVOICE, "percentage": "ten"}, "percentage",
                 "'ten' is not of type 'number'", id="create-invoice: percentage a string"),
    pytest.param("POST", "/invoices", {**INVOICE, "sections": [{"id": "first", "lineItems": [LINE2]}]},
                 "sections[0].id", "'first' is not of type 'integer'", id="create-invoice: section id a string"),
    pytest.param("PATCH", "/invoices/{id}", {"sections": [{"id": 1.5, "lineItems": [LINE2]}]},
                 "sections[0].id", "1.5 is not of type 'integer'", id="update-invoice: section id a fraction"),
    pytest.param("POST", "/accounts", {**ACCOUNT, "contacts": 0}, "contacts",
                 "0 is not of type 'array', 'null'", id="create-account: contacts a number"),
    pytest.param("POST", "/accounts", {**ACCOUNT, "contacts": {}}, "contacts",
                 "{} is not of type 'array', 'null'", id="create-account: contacts an object"),
]


@pytest.mark.parametrize(("method", "path", "body", "field", "reason"), REFUSED)
def test_a_body_only_the_schema_refuses_is_a_400_naming_its_path(method: str, path: str, body: Any,
                                                                  field: str, reason: str) -> None:
    with SandboxServer("coperniq") as sb:
        status, made = send(sb, "POST", "/invoices", INVOICE)
        assert status == 201
        before = counts(sb)
        status, answer = send(sb, method, path.format(id=made["id"]), body)
        assert status == 400, answer
        assert answer["field"] == field
        assert reason in answer["message"] and answer["message"].startswith(field)
        assert "code" not in answer  # the dialect's 400 shape: message and field only
        assert counts(sb) == before
        assert send(sb, "GET", f"/invoices/{made['id']}", None) == (200, made)  # the PATCH changed nothing


def test_the_hand_rules_still_answer_first_with_their_own_message() -> None:
    with SandboxServer("coperniq") as sb:
        # Both an unknown record (hand rule) and a bad percentage (schema only): the hand rule wins.
        status, answer = send(sb, "POST", "/invoices", {**INVOICE, "recordId": 999_999, "percentage": "ten"})
    assert status == 400
    assert answer["field"] == "recordId" and "not found" in answer["message"]


def test_valid_bodies_with_exact_amounts_still_pass() -> None:
    exact = (b'{"recordId": 20001, "calculationMethod": "LINE_ITEMS", "status": "SENT",'
             b' "issueDate": "2026-03-31T00:00:00Z", "percentage": 12.5, "lineItems": [{"catalogItemId": 7001,'
             b' "quantity": 3, "unitCost": 0.1, "unitPrice": 0.1000000000000000000001}],'
             b' "sections": [{"id": 0, "name": null, "lineItems": [{"catalogItemId": 7002, "quantity": 1,'
             b' "unitCost": 0, "unitPrice": 0.2, "description": null}]}]}')
    with SandboxServer("coperniq") as sb:
        status, invoice = send(sb, "POST", "/invoices", exact)
        assert status == 201, invoice
        patched = send(sb, "PATCH", f"/invoices/{invoice['id']}", b'{"lineItems": [{"catalogItemId": 7003,'
                       b' "quantity": 2, "unitCost": 1.25, "unitPrice": 2.005}], "description": null}')
        item = send(sb, "POST", "/catalog-items", {**ITEM, "tradeGroup": "ENERGY", "manufacturer": None})
        account = send(sb, "POST", "/accounts", {**ACCOUNT, "contacts": [], "custom": {"any": [1, "x"]},
                                                 "accountType": "RESIDENTIAL", "primaryEmail": "a@b.example"})
    assert invoice["amount"] == Decimal("0.5000000000000000000003")  # sum(unitPrice x quantity), unrounded
    assert patched[0] == 200 and patched[1]["lineItems"][0]["catalogItemId"] == 7003
    assert item[0] == 201 and item[1]["sku"] == "SCHEMA-1"
    assert account[0] == 200 and account[1]["title"] == "Schema Co"


def test_every_served_operation_has_its_schema_and_decimals_are_numbers() -> None:
    schemas = request_schemas()
    body = {**INVOICE, "lineItems": [{**LINE, "unitCost": Decimal("0.1"), "unitPrice": Decimal("1E-30")}]}
    schemas.check("create-invoice", body)  # Decimal is a JSON number
    with pytest.raises(Invalid) as refused:
        schemas.check("create-invoice", {**INVOICE, "lineItems": [{**LINE, "unitPrice": True}]})
    assert refused.value.field == "lineItems[0].unitPrice"  # a boolean is no number
    assert set(OPERATIONS) == {"create-invoice", "update-invoice", "create-catalog-item", "create-account"}


def test_the_document_ships_in_the_package_and_is_the_vendors() -> None:
    shipped = load_document()  # through importlib.resources: the installed package's own file
    with (REPO / "fixtures" / "coperniq" / "coperniq-openapi.yml").open("rb") as f:
        assert shipped == yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert DOCUMENT in data["bulk.sandbox"]  # so `pip install .` copies it


@pytest.mark.parametrize("body", [
    INVOICE, {**INVOICE, "status": "LATE"}, {**INVOICE, "lineItems": [{**LINE, "quantity": "2"}]},
    {**INVOICE, "sections": [{"name": 5, "lineItems": [{"catalogItemId": 1}]}]}, {"recordId": None}, [], "x",
], ids=["valid", "unknown status", "quantity a string", "section name and line", "record null", "array", "string"])
def test_the_inlined_schema_judges_as_the_documents_references_do(body: Any) -> None:
    # The check inlines the $refs once for speed; the document read through the registry must agree.
    document = load_document()
    registry = Registry().with_resource(_URI, DRAFT202012.create_resource(document))
    by_reference = _Validator({"$ref": _URI + "#/components/schemas/InvoiceCreate"}, registry=registry)
    expected = sorted((list(e.absolute_path), e.message) for e in by_reference.iter_errors(body))
    served = request_schemas()._validators["create-invoice"]
    assert sorted((list(e.absolute_path), e.message) for e in served.iter_errors(body)) == expected
    assert bool(expected) == (body is not INVOICE)


def test_a_category_both_lists_hold_and_a_whole_decimal_integer_pass() -> None:
    """The document's text allows OTHER for a product and a service (it is in both enums of a
    ``oneOf``); 2.0 is an integer in Draft 2020-12. A value in neither list is refused, briefly."""
    schemas = request_schemas()
    for kind in ("PRODUCT", "SERVICE"):
        schemas.check("create-catalog-item", {"name": "x", "type": kind, "category": "OTHER", "cost": 0, "price": 1})
    with pytest.raises(Invalid) as refused:
        schemas.check("create-catalog-item",
                      {"name": "x", "type": "PRODUCT", "category": "NOPE", "cost": 0, "price": 1})
    assert refused.value.field == "category" and len(str(refused.value)) < 200, str(refused.value)
    body = {**INVOICE, "sections": [{"id": Decimal("2.0"), "lineItems": [LINE2]}]}
    schemas.check("create-invoice", body)
    with pytest.raises(Invalid):
        schemas.check("create-invoice", {**INVOICE, "sections": [{"id": Decimal("2.5"), "lineItems": [LINE2]}]})
