"""Intake: one input line to one record to upload, or the reason it is not one.

The single implementation of the checks every reader of an input makes, in this order:
blank lines are skipped; an overlong line (``data is None``) is rejected; the line is parsed
(:func:`bulk.records.parse_record`); its external id is deduped (the first line that used it
stands); a ``--shard K/N`` run keeps only its records; the target checks what it can offline
(``Target.check``). Its users:

- the producer of an upload (:meth:`bulk.pipeline.Run._produce`): dedupes through the job's
  ``state.db`` (:meth:`bulk.checkpoint.StateStore.first_line`), so a duplicate is found across
  resumed runs, and hands each record to the workers;
- ``bulk validate`` and ``bulk upload --dry-run`` (:func:`bulk.plan.make_plan`): dedupe in
  memory (nothing is written), and count.

Sharding: a shard owns the records whose customer key (``target.affinity``) hashes to it, so
one process resolves each customer; a line that is not a record (overlong, unparsable) has no
customer and belongs to the shard its line number picks. Every shard dedupes every record
before choosing (the first line of an external id stands, whichever shard owns it).

:meth:`Intake.screen` is called once per line on the hot path: it is one plain method over
attributes bound at construction, no allocation beyond the record itself.
"""

from __future__ import annotations

from collections.abc import Callable

from .checkpoint import id_hash
from .config import Shard
from .errors import InvalidRecord
from .records import Record, parse_record, peek_external_id
from .source import RawLine
from .targets.base import Target

__all__ = ["Intake", "memory_dedupe"]


def memory_dedupe() -> Callable[[str, int], int]:
    """A ``first_line`` that remembers in memory (64-bit id hashes): for a reader that must
    not write the job's ``state.db`` (``bulk validate``, ``--dry-run``)."""
    seen: dict[int, int] = {}

    def first_line(external_id: str, line_no: int) -> int:
        return seen.setdefault(id_hash(external_id), line_no)

    return first_line


class Intake:
    """The checks of one input; ``first_line(external_id, line_no)`` returns the first line
    that used the id (recording it if none did)."""

    __slots__ = ("_affinity", "_check", "_first_line", "_max_line", "_shard", "external_id")

    def __init__(self, *, max_line_bytes: int, first_line: Callable[[str, int], int], target: Target | None,
                 shard: Shard | None = None) -> None:
        if shard is not None and target is None:
            raise ValueError("a shard chooses its records by the target's affinity key: give the target")
        self._max_line = max_line_bytes
        self._first_line = first_line
        self._check = target.check if target is not None else None
        self._affinity = target.affinity if target is not None and shard is not None else None
        self._shard = shard
        #: the external id of the line last screened, when known (``None`` for a line too long
        #: or too broken to tell): what a rejection's reason names
        self.external_id: str | None = None

    def screen(self, raw: RawLine) -> Record | None:
        """The record on ``raw``; None when the line is blank or another shard's. Raises
        :class:`~bulk.errors.InvalidRecord` (naming line, field and fix) for a line this run
        rejects; :attr:`external_id` then says whose it is, when known."""
        data = raw.data
        shard, affinity = self._shard, self._affinity
        self.external_id = None
        if data is None:
            if shard and raw.line_no % shard.count != shard.index:
                return None
            raise InvalidRecord(raw.line_no, "(line)", f"the line is {raw.length} bytes, over the "
                                f"{self._max_line}-byte limit", "split the invoice or raise --max-line-bytes")
        if not data or data.isspace():
            return None  # a blank line
        try:
            record = parse_record(data, raw.line_no)
        except InvalidRecord:
            if shard and raw.line_no % shard.count != shard.index:
                return None  # another shard reports it
            self.external_id = peek_external_id(data)
            raise
        ext_id = self.external_id = record.external_id
        first = self._first_line(ext_id, raw.line_no)
        if shard and affinity and id_hash(affinity(record)) % shard.count != shard.index:
            return None
        if first != raw.line_no:
            raise InvalidRecord(raw.line_no, "external_id", f"duplicate of line {first} ({ext_id[:80]!r})",
                                "give each invoice its own external_id; the first one stands")
        if self._check is not None:
            self._check(record)
        return record
