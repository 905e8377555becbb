"""The ledger target's client adapter: one POST per record, made safe to repeat by an
``Idempotency-Key`` derived from the external id (see the wire contract in ``sandbox``)."""

from __future__ import annotations

import hashlib

from bulk.errors import ServerError
from bulk.records import Record
from bulk.targets import Created, Job, Target
from bulk.transport import Reply, Request


class LedgerTarget(Target):
    name = "ledger"
    credential_env = ("LEDGER_TOKEN",)
    base_url_env = "LEDGER_BASE_URL"

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.credentials['LEDGER_TOKEN']}"}

    def classify(self, reply: Reply, stage: str) -> Reply:
        if reply.status == 409:  # our own earlier attempt with this key is still in flight: retry
            raise ServerError(409, self.error_message(reply))
        return super().classify(reply, stage)

    async def upload(self, record: Record, job: Job) -> Created:
        body = {"number": record.external_id, "customer": record.customer.external_id, "currency": record.currency,
                "lines": [{"title": ln.title, "quantity": ln.quantity, "unit_price": ln.unit_price,
                           "tax_rate": ln.tax_rate} for ln in record.lines]}
        key = hashlib.sha256(f"ledger-invoice:{record.external_id}".encode()).hexdigest()
        reply = await job.send(Request("POST", "/v1/invoices", json=body, headers={"Idempotency-Key": key}),
                               stage="invoice")
        return Created(invoice_id=str(reply.json()["id"]), customer_id=record.customer.external_id)
