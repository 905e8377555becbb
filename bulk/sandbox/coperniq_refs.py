"""Coperniq's creates of what invoices reference: ``POST /catalog-items`` and ``POST /accounts``
(``../shared/specs/coperniq/coperniq-catalogitems-api-openapi.yml`` ``CatalogItemCreate``,
``coperniq-accounts-api-openapi.yml`` ``AccountUpsert``), as pure validation for the dialect.

``CatalogItemCreate``: ``name`` (string), ``type`` ``PRODUCT`` | ``SERVICE``, ``category`` (one
of ``ProductCategory`` for a product, ``ServiceCategory`` for a service; ``OTHER`` is in both
enums, so the document's ``oneOf`` refuses it), ``cost``, ``price`` (numbers) are required;
``tradeGroup`` (default ``OTHER``), ``manufacturer``, ``sku``, ``code``, ``description``
(string or null), ``preferredVendorId`` (an existing active vendor: the sandbox has none, so
only null). *Assumed* (the document says nothing): an active catalog item's ``sku`` is unique
(400, field ``sku``), as the invoice side needs to find an item by it.

``AccountUpsert``: ``title`` (string) and ``address`` (an array holding one string) are
required; ``description``, ``accountType`` ``RESIDENTIAL`` | ``COMMERCIAL``, ``primaryEmail``,
``primaryPhone``, ``contacts`` (ids; the sandbox has no contacts: empty or null only),
``custom`` (object). Query ``match_by`` (``title`` default, ``primaryEmail``, ``primaryPhone``,
``address``) and ``match_found_strategy`` (``skip`` default; ``replace``, ``enrich``): a
matching account is answered 200 as it is (skip) -- the documented "Matching account found"
-- and only otherwise created (also 200: the document lists no other success code). Matching
is exact (*assumed*: the document does not say).
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

from bulk.sandbox.coperniq_rules import Invalid

__all__ = [
    "PRODUCT_CATEGORIES",
    "SERVICE_CATEGORIES",
    "TRADE_GROUPS",
    "match_query",
    "validate_account",
    "validate_catalog_item",
]

PRODUCT_CATEGORIES = frozenset((
    "BATTERY_SYSTEM BATTERY_MANAGEMENT_SYSTEM CHARGING_GATEWAY COMBINER_BOX EV_CHARGER LOAD_CENTER "
    "MICROINVERTER MOUNTING POWER_OPTIMIZER PRODUCTION_METER PV_INVERTER PV_MODULE RACKING "
    "RAPID_SHUTDOWN_DEVICE TRACKER WEATHER_STATION AIR_CONDITIONER AIR_HANDLING_UNIT BOILER CHILLER "
    "COOLING_TOWER FAN HEAT_EXCHANGER HEAT_PUMP MAKE_UP_AIR_UNIT PUMP ROOFTOP_UNIT THERMOSTAT "
    "VARIABLE_FREQUENCY_DRIVE AUTOMATIC_TRANSFER_SWITCH BREAKER DISCONNECT_SWITCH ELECTRIC_METER GENERATOR "
    "LIGHTING_PANEL PANELBOARD SWITCHGEAR TRANSFORMER UNINTERRUPTIBLE_POWER_SUPPLY WIRE BACKFLOW_PREVENTER "
    "BOOSTER_PUMP GREASE_INTERCEPTOR STORAGE_TANK SUMP_PUMP VALVE WATER_FILTRATION_SYSTEM WATER_HEATER "
    "WATER_SOFTENER ACCESS_CONTROLLER AUTOMATION_CONTROLLER CAMERA CARD_READER DOOR_STRIKE MAGLOCK "
    "NETWORK_SWITCH NETWORK_VIDEO_RECORDER SENSOR WIRELESS_ACCESS_POINT ROOF_COVERING ROOF_UNDERLAYMENT "
    "ROOF_MEMBRANE ROOF_FLASHING ROOF_VENT WALL_CLADDING WALL_TRIM WEATHER_BARRIER WINDOW EXTERIOR_DOOR "
    "SKYLIGHT OPENING_FLASHING GUTTER DOWNSPOUT INSULATION SEALANT SHEATHING OTHER").split())
SERVICE_CATEGORIES = frozenset((
    "ADJUSTMENT BALANCING CALIBRATION CLEANING COMMISSIONING DECOMMISSIONING DIAGNOSTICS ENGINEERING "
    "EQUIPMENT_RENTAL INSPECTION INSTALLATION MAINTENANCE MONITORING OPTIMIZATION PERMITTING RELOCATION "
    "REMOVAL REPAIR REPLACEMENT RETROFIT SITE_SURVEY TESTING TRAINING OTHER").split())
TRADE_GROUPS = frozenset("ENERGY MECHANICAL ELECTRICAL PLUMBING LOW_VOLTAGE ENVELOPE OTHER".split())
_ITEM_KEYS = frozenset({"name", "type", "category", "cost", "price", "tradeGroup", "manufacturer", "sku", "code",
                        "description", "preferredVendorId"})
_ACCOUNT_KEYS = frozenset({"title", "description", "address", "accountType", "primaryEmail", "primaryPhone",
                           "contacts", "custom"})
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_MATCH_BY = ("title", "primaryEmail", "primaryPhone", "address")
_STRATEGIES = ("skip", "replace", "enrich")


def _object(body: Any, keys: frozenset[str]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise Invalid("body", "the request body must be a JSON object")
    for key in body:
        if key not in keys:
            raise Invalid(str(key), f"{key} is not a field of this request")
    return body


def _text(body: dict[str, Any], key: str, *, required: bool = False, nullable: bool = True) -> str | None:
    value = body.get(key)
    if value is None:
        if required or (key in body and not nullable):
            raise Invalid(key, f"{key} is required" if required else f"{key} must be a string")
        return None
    if not isinstance(value, str) or (required and not value.strip()):
        raise Invalid(key, f"{key} must be a non-empty string" if required else f"{key} must be a string")
    return value


def _number(body: dict[str, Any], key: str) -> Decimal:
    value = body.get(key)
    if type(value) is int:
        return Decimal(value)
    if type(value) is Decimal and value.is_finite():
        return value
    raise Invalid(key, f"{key} is required and must be a number")


def validate_catalog_item(body: Any) -> dict[str, Any]:
    """The stored fields of a ``CatalogItemCreate`` (SKU uniqueness is the caller's check)."""
    body = _object(body, _ITEM_KEYS)
    name = _text(body, "name", required=True)
    kind = body.get("type")
    if kind not in ("PRODUCT", "SERVICE"):
        raise Invalid("type", "type is required and must be PRODUCT or SERVICE")
    category = body.get("category")
    allowed = PRODUCT_CATEGORIES if kind == "PRODUCT" else SERVICE_CATEGORIES
    if not isinstance(category, str) or category not in allowed:
        raise Invalid("category", f"category is required and must be a {kind.title()}Category code")
    if category in PRODUCT_CATEGORIES and category in SERVICE_CATEGORIES:
        raise Invalid("category", f"category {category} matches both ProductCategory and ServiceCategory "
                      "(oneOf): choose a specific code")
    trade = body.get("tradeGroup", "OTHER")
    if trade not in TRADE_GROUPS:
        raise Invalid("tradeGroup", f"tradeGroup must be one of {', '.join(sorted(TRADE_GROUPS))}")
    if body.get("preferredVendorId") is not None:
        raise Invalid("preferredVendorId", "preferredVendorId must be an existing active vendor of this company")
    return {"name": name, "type": kind, "category": category, "catalog": trade,
            "cost": _number(body, "cost"), "price": _number(body, "price"),
            **{key: _text(body, key) for key in ("manufacturer", "sku", "code", "description")}}


def validate_account(body: Any) -> dict[str, Any]:
    """The stored fields of an ``AccountUpsert``."""
    body = _object(body, _ACCOUNT_KEYS)
    title = _text(body, "title", required=True)
    address = body.get("address")
    if not (isinstance(address, list) and len(address) == 1 and isinstance(address[0], str)):
        raise Invalid("address", "address is required: an array holding one string, the account's location")
    account_type = body.get("accountType")
    if account_type is not None and account_type not in ("RESIDENTIAL", "COMMERCIAL"):
        raise Invalid("accountType", "accountType must be RESIDENTIAL or COMMERCIAL")
    email = _text(body, "primaryEmail", nullable=False)
    if email is not None and not _EMAIL.fullmatch(email):
        raise Invalid("primaryEmail", "primaryEmail must be an e-mail address")
    if body.get("contacts"):
        raise Invalid("contacts", "contacts must be ids of existing contacts (create them via POST /contacts first)")
    custom = body.get("custom", {})
    if not isinstance(custom, dict):
        raise Invalid("custom", "custom must be an object")
    return {"title": title, "description": _text(body, "description"), "address": list(address),
            "accountType": account_type, "primaryEmail": email,
            "primaryPhone": _text(body, "primaryPhone", nullable=False), "custom": custom}


def match_query(query: Any) -> tuple[str, str]:
    """``(match_by, match_found_strategy)`` of a ``POST /accounts``."""
    match_by = query.get("match_by", "title")
    strategy = query.get("match_found_strategy", "skip")
    if match_by not in _MATCH_BY:
        raise Invalid("match_by", f"match_by must be one of {', '.join(_MATCH_BY)}")
    if strategy not in _STRATEGIES:
        raise Invalid("match_found_strategy", f"match_found_strategy must be one of {', '.join(_STRATEGIES)}")
    return match_by, strategy
