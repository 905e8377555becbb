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
customer and belongs to the shard its line number picks. The first valid line of an external
id stands, whichever shard owns it, so every shard dedupes every record before choosing.

Skipping the other shards' lines (``reread`` given, the target's affinity the default
customer external id): one msgspec pass peeks a line's ids. A line the peek places (plain
ids) is its customer's shard's alone, to accept and to report invalid, and only that shard
parses it; a line it cannot place (not JSON, ids that are not plain) is parsed by every
shard and reported invalid by the shard its line number picks. Another shard's placed line
is only *noted* under its external id, as "line L at offset S, not validated" (a negative
``first_line`` value), and validated only when the id comes again (rare): the first later
line of the id rereads it (``reread(S)``), and every later line of the id is parsed in full.
The first valid line of an id is then still the one that stands, for every shard, across
resumed runs (the notes are ``state.db`` rows like any other). Which shard reports an invalid
line differs from a run that parses every line (there, the line number's), but every shard
places a line alike, so each is reported exactly once.

:meth:`Intake.screen` is called once per line on the hot path: it is one plain method over
attributes bound at construction; a shard worker's peek allocates one small struct a line.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable

import msgspec

from ._record_fast import _fast_record
from ._record_fields import _plain_exact
from ._record_general import _parse_general
from .checkpoint import id_hash
from .config import Shard
from .errors import InputUnreadable, InvalidRecord
from .records import Record, parse_record, peek_external_id
from .source import RawLine
from .targets.base import Target

__all__ = ["Intake", "file_reread", "memory_dedupe"]


def memory_dedupe() -> Callable[[str, int], int]:
    """A ``first_line`` that remembers in memory (64-bit id hashes): for a reader that must
    not write the job's ``state.db`` (``bulk validate``, ``--dry-run``)."""
    seen: dict[int, int] = {}

    def first_line(external_id: str, line_no: int) -> int:
        return seen.setdefault(id_hash(external_id), line_no)

    return first_line


def file_reread(path: str) -> Callable[[int], bytes] | None:
    """``reread(start)``: the line (without ``"\\n"``) starting at byte ``start`` of the plain
    file ``path``; None for stdin, ``.gz`` inputs and anything but a regular file (a FIFO, a
    ``/dev/fd/N``: their offsets cannot be sought). A read that fails stops the run resumably
    (:class:`~bulk.errors.InputUnreadable`), naming the input."""
    if path == "-" or path.endswith(".gz"):
        return None
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None
    except OSError:
        return None  # the reader says what is wrong with the input

    def reread(start: int) -> bytes:
        try:
            with open(path, "rb") as f:
                f.seek(start)
                return f.readline().removesuffix(b"\n")
        except OSError as exc:
            raise InputUnreadable(f"cannot read input {path!r} again at byte {start}: {exc.strerror or exc}; "
                                  "restore the file and run the same command") from None

    return reread


class _PeekCustomer(msgspec.Struct):
    external_id: object = None


class _Peek(msgspec.Struct):
    """The two fields that choose a line's shard: decoded in C, the rest of the line skipped."""

    external_id: object = None
    customer: _PeekCustomer | None = None


_peek = msgspec.json.Decoder(_Peek).decode
# A note "line L at offset S, not validated" is the first_line value -(L << _BITS | S).
_BITS = 38
_MAX_START, _MAX_LINE = 1 << _BITS, 1 << (62 - _BITS)
# The key under which the first valid line of an id whose first line was a note is kept (no
# valid external id contains a control character, so no id's own key collides with it).
_AFTER_NOTE = "\x00"
# What a peek says of a line (Intake._place).
_MINE, _OTHERS, _NOTED, _UNPLACED = object(), object(), object(), object()


class Intake:
    """The checks of one input; ``first_line(external_id, line_no)`` returns the first line
    that used the id (recording it if none did)."""

    __slots__ = ("_affinity", "_check", "_first_line", "_max_line", "_reread", "_shard", "external_id")

    def __init__(self, *, max_line_bytes: int, first_line: Callable[[str, int], int], target: Target | None,
                 shard: Shard | None = None, reread: Callable[[int], bytes] | None = None) -> None:
        if shard is not None and target is None:
            raise ValueError("a shard chooses its records by the target's affinity key: give the target")
        self._max_line = max_line_bytes
        self._first_line = first_line
        # Target.check's default does nothing: not called a line then (an override, even one set
        # on the instance, is called)
        check = target.check if target is not None else None
        self._check = check if getattr(check, "__func__", None) is not Target.check else None
        self._affinity = target.affinity if target is not None and shard is not None else None
        self._shard = shard
        # Skipping needs the customer key without a parse: only the default key (customer.external_id).
        skips = (shard is not None and shard.count > 1 and target is not None
                 and type(target).affinity is Target.affinity)
        self._reread = reread if skips else None
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
        # Who reports this line if it is invalid: a line a peek places, its customer's shard;
        # any other, the shard its line number picks (every shard places a line alike).
        reports = not shard or raw.line_no % shard.count == shard.index
        if self._reread is not None:
            placed = self._place(raw, data)
            if placed is _NOTED:
                return None
            if placed is not _UNPLACED:
                reports = placed is _MINE
        line_no = raw.line_no
        try:
            # parse_record's two paths, called here (a frame a line saved)
            record = _fast_record(data, line_no) or _parse_general(data, line_no)
        except InvalidRecord:
            if not reports:
                return None  # another shard reports it
            self.external_id = peek_external_id(data)
            raise
        ext_id = self.external_id = record.external_id
        first = self._first_line(ext_id, line_no)
        if first < 0:  # the id's first line was noted, not validated (_first_valid)
            first = self._first_valid(ext_id, line_no, first)
        if shard and affinity and id_hash(affinity(record)) % shard.count != shard.index:
            return None
        if first != line_no:
            raise InvalidRecord(line_no, "external_id", f"duplicate of line {first} ({ext_id[:80]!r})",
                                "give each invoice its own external_id; the first one stands")
        if self._check is not None:
            self._check(record)
        return record

    def _place(self, raw: RawLine, data: bytes) -> object:
        """Where ``raw`` belongs, by a peek of its ids: :data:`_MINE` (this shard's customer: parse
        and report it), :data:`_OTHERS` (another shard's, but parse it: its id came before, or it
        cannot be noted), :data:`_NOTED` (another shard's, noted without a parse) or
        :data:`_UNPLACED` (a peek cannot tell: the parse judges it, its line number reports it)."""
        try:
            peek = _peek(data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return _UNPLACED
        ext_id, customer = peek.external_id, peek.customer
        if customer is None or not _plain_exact(ext_id, 100) or not _plain_exact(customer.external_id, 100):
            return _UNPLACED  # the parse may change or reject them: let it judge
        shard = self._shard
        assert shard is not None
        if id_hash(customer.external_id) % shard.count == shard.index:
            return _MINE
        line_no, start = raw.line_no, raw.start
        if line_no >= _MAX_LINE or start >= _MAX_START:
            return _OTHERS
        note = -(line_no << _BITS | start)
        # else the id came before: parse, so that it counts
        return _NOTED if self._first_line(ext_id, note) == note else _OTHERS

    def _first_valid(self, ext_id: str, line_no: int, first: int) -> int:
        """The first valid line of ``ext_id``, given that ``line_no`` is a valid one and that
        ``first_line`` gave ``first``, a note (negative)."""
        noted, start = -first >> _BITS, -first & (_MAX_START - 1)
        if noted >= line_no:
            return line_no
        reread = self._reread
        assert reread is not None  # notes are written only when rereading is possible
        try:
            parse_record(reread(start), noted)
            return noted
        except InvalidRecord:
            return self._first_line(_AFTER_NOTE + ext_id, line_no)
