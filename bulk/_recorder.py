"""The recorder: a record's outcome into the outputs and the tally, in one synchronous step.

Every outcome of a run goes through here: an invoice in the ID map (:meth:`Recorder.created`),
a record the API refused or that stayed uncertain (:meth:`Recorder.failed`), a line intake
rejected (:meth:`Recorder.reject`). Each writes its row (:class:`bulk.outputs.Outputs`) and
counts it (:class:`bulk.tally.Tally`) without awaiting, so a checkpoint (which flushes the
outputs and snapshots the tally with no await between) never sees one without the other. The
caller marks the record finished in the watermark right after, still without an await.
"""

from __future__ import annotations

from ._money_minor import lines_minor as _lines_minor
from ._money_scaled import _sums
from .errors import InvalidRecord
from .money import _MINOR_UNITS, _MULTIPLY, _QUANTUM
from .outputs import Outputs
from .records import Record
from .source import RawLine
from .tally import Tally
from .targets.base import Created

__all__ = ["Recorder"]


class Recorder:
    """Writes outcomes to ``outputs`` and counts them in ``tally`` (the job's, restored from
    the checkpoint). ``input_path``: where an overlong line's bytes are copied from into
    ``failed.ndjson`` (never held in memory whole); ``copyable`` is False for stdin or a
    ``.gz`` input, which cannot be re-read there: the line's reason stays, its bytes do not."""

    __slots__ = ("_copyable", "_input_path", "_outputs", "tally")

    def __init__(self, outputs: Outputs, tally: Tally, *, input_path: str, copyable: bool) -> None:
        self._outputs = outputs
        self.tally = tally
        self._input_path = input_path
        self._copyable = copyable

    def created(self, record: Record, created: Created) -> None:
        # The money rule on integers of minor units (bulk._money_minor), the common case inline:
        # the tally sums them as integers (Tally.add_minor), no Totals an invoice.
        currency = record.currency
        exponent = _MINOR_UNITS[currency]
        try:
            sums = _sums(record.lines, record.prices, exponent)
        except KeyError:  # an amount met for the first time, or one the integer path is unsure of
            sums = None
        if sums is None:
            sums = _lines_minor(record.lines, record.prices, currency)
        net, tax, gross = sums
        # The row's amounts: the Decimals lines_totals gives (an int times the quantum, exact in
        # _MULTIPLY's 50 digits), whose text libmpdec writes for less than formatting the ints in
        # Python does (callgrind: ~2,400 instructions an amount against ~3,800).
        q = _QUANTUM[currency]
        expected = _MULTIPLY(gross, q)
        action = created.action or ("existing" if created.existed else "created")  # Created.outcome, inline
        self._outputs.created_row(
            record.external_id, created.invoice_id, record.line_no, created.customer_id or "",
            created.status or record.status, currency, _MULTIPLY(net, q), _MULTIPLY(tax, q), expected, action,
        )
        t = self.tally
        t.read += 1
        # `created` keeps its meaning (made now, or found already made: `existing`); an invoice
        # changed or confirmed by --on-existing update is counted apart. Every ID map row is in
        # the totals: they reconcile against the source.
        if action == "updated":
            t.updated += 1
        elif action == "unchanged":
            t.unchanged += 1
        else:
            t.created += 1
            t.existing += action == "existing"
        # Tally.add_minor, inline (once per invoice: a call fewer; keep the two alike)
        if (acc := t._minor.get(currency)) is None:
            t._minor[currency] = [1, net, tax]
        else:
            acc[0] += 1
            acc[1] += net
            acc[2] += tax
        if created.reported_gross is not None and created.reported_gross != expected:
            t.mismatch(record.external_id, currency, expected, created.reported_gross)

    def failed(self, line_no: int, data: bytes | RawLine, external_id: str | None, kind: str, stage: str,
               field: str, status: int | str, message: str) -> None:
        """A failed record (``kind`` failed, uncertain or rejected): its line into
        ``failed.ndjson`` (``data``: its bytes, or the overlong line to copy), the reason
        into ``failed_reasons.csv``."""
        reason = [line_no, external_id or "", kind, stage, field, status, message]
        if isinstance(data, bytes):
            self._outputs.failed(data, reason)
        elif not self._copyable:
            self._outputs.failed(b"", reason)  # an overlong line we cannot re-read: the reason stays
        else:
            # An overlong line: copied from the input, never held in memory whole.
            self._outputs.failed_copy(self._input_path, data.start, data.length, reason)
        t = self.tally
        t.read += 1
        if kind == "rejected":
            t.rejected += 1
        elif kind == "uncertain":
            t.uncertain += 1
        else:
            t.failed += 1

    def reject(self, raw: RawLine, exc: InvalidRecord, external_id: str | None) -> None:
        """A line intake refused (``bulk._intake``): stage ``parse``, the field and message of ``exc``."""
        self.failed(raw.line_no, raw.data if raw.data is not None else raw, external_id, "rejected", "parse",
                    exc.field, "", exc.message)
