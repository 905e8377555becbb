"""The anny sandbox's rules, by concept (the contract is in ``anny.py``); this module names
them all in one place:

- ``_anny_jsonapi``: JSON:API documents and error answers (:class:`ApiError`, ``error_body``,
  ``document``);
- ``_anny_checks``: attribute validation (:class:`Errors`, ``number``), every problem of a
  body reported, not only the first;
- ``_anny_bodies``: request bodies -> stored fields (``customer_fields`` ... ``item_fields``);
- ``_anny_money``: the money rule of items (``item_totals``) and exact JSON amounts;
- ``_anny_guard``: the identical-request guard (:class:`IdenticalGuard`).
"""

from __future__ import annotations

from bulk.sandbox._anny_bodies import (
    ADDRESS_KEYS,
    CUSTOMER_KEYS,
    INVOICE_KEYS,
    INVOICE_UPDATE_KEYS,
    ITEM_KEYS,
    address_fields,
    customer_fields,
    invoice_fields,
    invoice_update_fields,
    item_fields,
)
from bulk.sandbox._anny_checks import Errors, number
from bulk.sandbox._anny_guard import IdenticalGuard
from bulk.sandbox._anny_jsonapi import ApiError, document, error_body
from bulk.sandbox._anny_money import ROUNDINGS, ItemTotals, exact, item_totals, money

__all__ = [
    "ADDRESS_KEYS",
    "CUSTOMER_KEYS",
    "INVOICE_KEYS",
    "INVOICE_UPDATE_KEYS",
    "ITEM_KEYS",
    "ROUNDINGS",
    "ApiError",
    "Errors",
    "IdenticalGuard",
    "ItemTotals",
    "address_fields",
    "customer_fields",
    "document",
    "error_body",
    "exact",
    "invoice_fields",
    "invoice_update_fields",
    "item_fields",
    "item_totals",
    "money",
    "number",
]
