"""How Coperniq's stored objects are made: catalog items, accounts, invoices and their lines,
and the seed that ``--seed-from`` adds over the built-in one (``seed_skus``, ``seed_accounts``).

:class:`CoperniqStore` is a mixin of the dialect: it works on the dialect's durable tables
(``catalog``, ``accounts``, ``projects``, ``invoices``, ``issue_dates``) and counters
(``line_ids``, ``deleted``: the dialect's ``durable_values``), which the dialect sets up in
``clear()``. Amounts are exact: sum(unitPrice x quantity), unrounded.
"""

from __future__ import annotations

from decimal import Context, Decimal
from typing import Any

from bulk.sandbox._coperniq_wire import utc_now
from bulk.sandbox.coperniq_rules import NewInvoice, Seed
from bulk.sandbox.durable import Table

__all__ = ["MADE_ACCOUNTS", "CoperniqStore"]

_CTX = Context(prec=60)
MADE_ACCOUNTS = 30_000_000  # accounts made through the API or --seed-from get ids above this


class CoperniqStore:
    """Makes and stores the dialect's objects; the handlers validate, this stores."""

    seed: Seed
    seed_skus: list[str]
    seed_accounts: list[tuple[str, int | None]]
    catalog: dict[int, dict[str, Any]]
    accounts: dict[int, dict[str, Any]]
    projects: Table[int, dict[str, Any]]
    invoices: dict[int, dict[str, Any]]
    issue_dates: dict[int, str | None]
    line_ids: int
    deleted: int

    def _seed_more(self, now: str) -> None:
        """``seed_skus`` and ``seed_accounts`` (``--seed-from``), over the built-in seed."""
        skus = {item["sku"] for item in self.catalog.values()}
        for sku in self.seed_skus:
            if sku not in skus:
                skus.add(sku)
                self._add_item({"name": f"Catalog item {sku}", "type": "SERVICE", "category": "INSTALLATION",
                                "catalog": "OTHER", "cost": Decimal(0), "price": Decimal(0), "manufacturer": None,
                                "sku": sku, "code": None, "description": None}, now)
        titles = {a["title"] for a in self.accounts.values()}
        for title, ident in self.seed_accounts:
            if ident is not None and (ident in self.accounts or ident in self.projects):
                continue
            if ident is None and title in titles:
                continue
            titles.add(title)
            self._add_account({"title": title, "description": None, "address": [""], "accountType": "COMMERCIAL",
                               "primaryEmail": None, "primaryPhone": None, "custom": {}}, now, ident)

    def _add_item(self, fields: dict[str, Any], now: str) -> dict[str, Any]:
        item_id = max(self.catalog, default=self.seed.CATALOG_BASE) + 1
        item = {"id": item_id, **fields, "image": None, "isArchived": False, "createdById": 1,
                "createdAt": now, "updatedAt": now, "preferredVendorId": None}
        self.catalog[item_id] = item
        return item

    def _add_account(self, fields: dict[str, Any], now: str, ident: int | None = None) -> dict[str, Any]:
        # New ids above every seeded account and project id, so an id never names both.
        new_id = ident if ident is not None else max(max(self.accounts, default=0), MADE_ACCOUNTS) + 1
        account = {"id": new_id, "createdAt": now, "updatedAt": now, **fields, "isActive": True,
                   "number": len(self.accounts) + 1, "createdBy": None, "updatedBy": None}
        self.accounts[new_id] = account
        return account

    def _lines(self, new_lines: list[tuple[int, int, Decimal, Decimal, str | None]]
               ) -> tuple[Decimal, list[dict[str, Any]]]:
        amount, lines = Decimal(0), []
        for item_id, quantity, cost, price, description in new_lines:
            amount = _CTX.add(amount, _CTX.multiply(price, quantity))
            self.line_ids += 1
            item = self.catalog[item_id]
            lines.append({"id": self.line_ids, "catalogItemId": item_id, "quantity": quantity, "unitCost": cost,
                          "unitPrice": price, "description": description,
                          "catalogItem": {k: item[k] for k in ("id", "name", "manufacturer", "sku", "type")}})
        return amount, lines

    def _commit(self, new: NewInvoice) -> dict[str, Any]:
        now = utc_now()
        if new.record_id in self.projects:
            project = self.projects[new.record_id]
            account = self.accounts[project["accountId"]]
            record = {"id": project["id"], "uid": project["uid"], "title": project["title"]}
        else:
            account = self.accounts[new.record_id]
            record = {"id": account["id"], "uid": account["number"], "title": account["title"]}
        amount, lines = self._lines(new.lines)
        invoice_id = 900_000 + len(self.invoices) + self.deleted + 1
        invoice: dict[str, Any] = {
            "id": invoice_id, "uid": invoice_id - 899_000, "description": new.description, "type": "INVOICE",
            "status": new.status, "basedOnId": None, "basedOnUid": None,
            "amount": amount, "amountPaid": amount if new.status == "PAID" else Decimal(0),
            "isArchived": False, "sharedWithPortal": False, "calculationMethod": "LINE_ITEMS",
            "percentage": None, "baseAmount": None, "createdAt": now, "updatedAt": now,
            "account": {"id": account["id"], "title": account["title"]}, "record": record, "lineItems": lines,
        }
        if new.due_date is not None:
            invoice["dueDate"] = new.due_date  # ``type: string``, not nullable: absent when unset
        self.invoices[invoice_id] = invoice
        self.issue_dates[invoice_id] = new.issue_date
        return invoice
