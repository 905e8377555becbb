"""The request-body schemas of Coperniq's published OpenAPI document, as the sandbox's catch-all check.

``coperniq-openapi.json`` (next to this module, shipped as package data) is the vendor's document
(``fixtures/coperniq/coperniq-openapi.yml``) in JSON syntax: the same content, read in about 10 ms
by orjson instead of about 0.8 s by PyYAML, and no YAML parser among the package's dependencies
(``tests/test_coperniq_schema.py`` proves the two equal). The dialect runs its hand rules first
(``coperniq_rules``, ``coperniq_refs``: vendor-like messages and the semantic checks), then
:meth:`RequestSchemas.check`: whatever else the document's ``requestBody`` schema refuses is a 400
naming the field's JSON path and jsonschema's message.

The document is OpenAPI 3.1, whose Schema Object is JSON Schema Draft 2020-12 (so ``nullable`` is
spelled ``type: [..., "null"]`` and needs no translation). ``format`` stays an annotation, as
Draft 2020-12 makes it by default: the hand rules already check the date-times and e-mail address.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from decimal import Decimal
from importlib import resources
from typing import TYPE_CHECKING, Any

import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match
from jsonschema.protocols import Validator
from jsonschema.validators import extend
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from bulk.sandbox.coperniq_rules import Invalid

if TYPE_CHECKING:  # referencing exports the type only from its core module (as its own jsonschema module imports it)
    from referencing._core import Resolver

__all__ = ["DOCUMENT", "OPERATIONS", "RequestSchemas", "load_document", "request_schemas"]

DOCUMENT = "coperniq-openapi.json"
_URI = "urn:coperniq:openapi"
#: operationId -> (path, method) of every request body the dialect serves
OPERATIONS: Mapping[str, tuple[str, str]] = {
    "create-invoice": ("/invoices", "post"),
    "update-invoice": ("/invoices/{invoiceId}", "patch"),
    "create-catalog-item": ("/catalog-items", "post"),
    "create-account": ("/accounts", "post"),
}


def _is_number(checker: Any, instance: Any) -> bool:
    # The dialect reads JSON numbers exactly: a fraction arrives as Decimal, a whole number as int.
    # Said outright rather than left to Decimal's registration as a numbers.Number.
    return not isinstance(instance, bool) and isinstance(instance, int | float | Decimal)


def _is_integer(checker: Any, instance: Any) -> bool:
    # Draft 2020-12: a number with a zero fractional part is an integer (2.0 arrives as Decimal)
    return _is_number(checker, instance) and (not isinstance(instance, Decimal) or (
        instance.is_finite() and instance == instance.to_integral_value()))


_NUMBERS = Draft202012Validator.TYPE_CHECKER.redefine_many({"number": _is_number, "integer": _is_integer})
_Validator = extend(Draft202012Validator, type_checker=_NUMBERS)  # type: ignore[no-untyped-call]  # stubs leave extend untyped


def load_document() -> dict[str, Any]:
    """The vendor's OpenAPI document, read from the installed package."""
    document: dict[str, Any] = orjson.loads(resources.files("bulk.sandbox").joinpath(DOCUMENT).read_bytes())
    return document


def _path(parts: Any) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out or "body"


#: keywords beside a ``$ref`` that only annotate: dropped when the ``$ref`` is inlined
_ANNOTATIONS = frozenset({"description", "title", "default", "example", "examples", "deprecated"})


def _inline(node: Any, resolver: Resolver[Any], seen: tuple[str, ...] = ()) -> Any:
    """``node`` with every ``$ref`` replaced by what ``referencing`` resolves it to, once, at
    construction: jsonschema then never looks a reference up per request (a 5-line invoice checks
    in ~0.3 ms instead of ~1.5 ms). A reference back into itself (a cycle) stays a ``$ref``."""
    if isinstance(node, list):
        return [_inline(item, resolver, seen) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if not isinstance(ref, str):
        return {key: _inline(value, resolver, seen) for key, value in node.items()}
    if ref in seen:  # left to the registry, so made absolute: "#/..." would mean the inlined root
        return {**node, "$ref": _URI + ref if ref.startswith("#") else ref}
    resolved = resolver.lookup(ref)
    target = _inline(resolved.contents, resolved.resolver, (*seen, ref))
    rest = {key: _inline(value, resolver, seen) for key, value in node.items()
            if key != "$ref" and key not in _ANNOTATIONS}
    return {"allOf": [target], **rest} if rest else target  # beside a $ref, keywords apply too (2020-12)


def _enum_choices(node: Any) -> Any:
    """``node`` with every ``oneOf`` of plain ``enum`` branches read as ``anyOf``. The document's
    ``CatalogCategoryCode`` is ``oneOf: [ProductCategory, ServiceCategory]`` and its text says
    "one of ProductCategory for a product, ServiceCategory for a service"; both lists hold
    ``OTHER``, which a strict ``oneOf`` (exactly one branch) would refuse for either type."""
    if isinstance(node, list):
        return [_enum_choices(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _enum_choices(value) for key, value in node.items()}
    branches = out.get("oneOf")
    if isinstance(branches, list) and branches and all(isinstance(b, dict) and "enum" in b for b in branches):
        out["anyOf"] = out.pop("oneOf")
    return out


def _short(value: Any) -> str:
    text = str(value) if isinstance(value, Decimal) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class RequestSchemas:
    """One validator per operation of :data:`OPERATIONS`, ``$ref``s resolved in the document."""

    def __init__(self, document: Mapping[str, Any]) -> None:
        version = str(document.get("openapi", ""))
        if not version.startswith("3.1"):  # 3.0's Schema Object (nullable, ...) is not Draft 2020-12
            raise ValueError(f"the Coperniq document is OpenAPI {version}; this check reads OpenAPI 3.1 only")
        registry: Registry[Any] = Registry().with_resource(_URI, DRAFT202012.create_resource(document))
        resolver = registry.resolver(_URI)
        self._validators: dict[str, Validator] = {}
        for operation, (path, method) in OPERATIONS.items():
            op = document["paths"][path][method]
            if op.get("operationId") != operation:
                raise ValueError(f"{method.upper()} {path} is {op.get('operationId')!r}, not {operation}")
            schema = op["requestBody"]["content"]["application/json"]["schema"]
            self._validators[operation] = _Validator(_enum_choices(_inline(schema, resolver)), registry=registry)

    def check(self, operation: str, body: Any) -> None:
        """Raise :class:`~bulk.sandbox.coperniq_rules.Invalid` if ``body`` violates the
        operation's request-body schema: ``field`` is the JSON path (``sections[0].id``)."""
        error = best_match(self._validators[operation].iter_errors(body))
        if error is not None:
            field, message = _path(error.absolute_path), error.message
            if error.validator in ("enum", "oneOf", "anyOf"):  # jsonschema lists every choice: kBs of text
                message = f"{_short(error.instance)} is not one of the values the schema allows"
            elif isinstance(error.instance, Decimal) and message.startswith(repr(error.instance)):
                message = str(error.instance) + message[len(repr(error.instance)):]  # the JSON text, not Python's
            raise Invalid(field, f"{field}: {message} (OpenAPI {operation} request body)")


@functools.cache
def request_schemas() -> RequestSchemas:
    """The document's schemas, built once per process (every dialect instance shares them)."""
    return RequestSchemas(load_document())
