"""The job's durable state: ``state.db`` in the run directory (SQLite, WAL, synchronous=FULL).

One SQLite transaction holds everything a resumed run needs, so a checkpoint is atomic and
durable in one commit (SQLite's own journal gives the temp-file-and-rename guarantee):

- ``meta['checkpoint']``: a small JSON document, the *resume file* proper: input fingerprint,
  the watermark (byte offset and line number below which every record is finished), the lines
  finished beyond the watermark, the step state of records still in flight, the counters and
  totals, and the size of every output file at that instant. Its size is bounded by the
  window, not by the input.
- ``seen``: 64-bit hash of each external id -> the first line that used it, to reject
  duplicates across resumed runs without holding every id in memory.
- ``resolved``: customers (and other lookups) resolved once per run and kept across runs.

Rows in ``seen`` and ``resolved`` may run ahead of the checkpoint (they are facts, true
whatever happened later), never behind it: they are committed in the same transaction.
A checkpoint takes them on the event loop at its instant (:meth:`StateStore.take`) and may
write them in a worker thread (:meth:`StateStore.write`) while the loop puts the next ones.
"""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from ._checkpoint_doc import VERSION, Checkpoint, load_checkpoint, one, read_checkpoint, stored_document
from .errors import OutputError

__all__ = ["VERSION", "Checkpoint", "Commit", "StateStore", "id_hash", "load_checkpoint", "read_checkpoint"]


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS seen (h INTEGER PRIMARY KEY, line INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS resolved (ns TEXT NOT NULL, k TEXT NOT NULL, v TEXT NOT NULL,
                                     PRIMARY KEY (ns, k)) WITHOUT ROWID;
"""


#: the in-memory filter of the ids this run recorded (StateStore._filter): 2**23 bits
_FILTER_BYTES = 1 << 20
_FILTER_MASK = (_FILTER_BYTES << 3) - 1

#: resolved values kept in memory (StateStore._cache). A miss is one indexed SELECT (a few
#: microseconds); an entry costs ~280 bytes (key tuple, id strings, its dict entry).
#: 20,000 of them were ~5.6 MB of the 64 MB budget at 1,000,000 records (100,000 customers:
#: the cache was full from ~25,000 records on, and hit only 20% of lookups anyway).
CACHE_ENTRIES = 2_048

#: the in-memory filter of the resolved keys this run evicted from the cache (StateStore._evicted):
#: 2**18 bits (32 KiB: the 1,000,000-record run's peak RSS is 63.9 MB of its 64). With 2,000
#: customers nothing is evicted; at 1,000,000 records of 100,000 customers ~31% of the lookups
#: of a new key still SELECT (all of them did).
_EVICTED_BYTES = 1 << 15
_EVICTED_MASK = (_EVICTED_BYTES << 3) - 1

#: SQLite's page cache (``PRAGMA cache_size``, KiB). The default, 2 MiB, held ~2.3 MB at a
#: 1,000,000-row ``seen``; that table is ~20 MiB and its lookups are random, so 2 MiB of it
#: hit little more than 512 KiB does (the interior pages, which both hold, are what count;
#: a miss reads the OS's page cache). The commit writes ``seen`` in key order, so a page
#: spilled from a small cache mid-transaction is not dirtied again by the same commit.
PAGE_CACHE_KIB = 512


_BLAKE2B_8 = hashlib.blake2b(digest_size=8)
_SIGNED_64 = struct.Struct(">q").unpack


def id_hash(external_id: str) -> int:
    """Signed 64-bit hash of an external id (SQLite integers are signed).

    A false duplicate needs a 64-bit collision: about 3e-8 for a million ids.
    """
    h = _BLAKE2B_8.copy()  # a copy of a fresh state: 2,000 instructions less than building one
    h.update(external_id.encode())
    value: int = _SIGNED_64(h.digest())[0]
    return value


@dataclass(slots=True)
class Commit:
    """One checkpoint's share of ``state.db``, taken on the loop (:meth:`StateStore.take`) and
    written by :meth:`StateStore.write`, which may run in a worker thread: the document's bytes
    and the rows first put since the last take (``resolved``: None is a forgotten key)."""

    doc: bytes
    seen: dict[int, int]
    resolved: dict[tuple[str, str], str | None]


class StateStore:
    """Owns ``state.db``. Every method but :meth:`write` is synchronous, cheap and for the event
    loop; :meth:`write` (the only fsync) may run in a worker thread while the loop goes on.

    Two connections, so the loop never waits for a commit: the loop's (``_db``) only reads, in
    autocommit mode (each SELECT sees the last commit); the writer's (``_wdb``) is used by
    :meth:`write` alone, one at a time (the caller serializes checkpoints). What the loop put
    since the last commit is held in memory (``_new_seen``, ``_pending``) and, while a commit is
    being written, in that :class:`Commit` (``_committing``): reads look there first, so a value
    is never missing between its put and its commit.
    """

    def __init__(self, run_dir: Path, *, cache_size: int = CACHE_ENTRIES) -> None:
        self.path = run_dir / "state.db"
        try:
            self._wdb = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._wdb.execute("PRAGMA journal_mode=WAL")
            self._wdb.execute("PRAGMA synchronous=FULL")
            self._wdb.execute(f"PRAGMA cache_size=-{PAGE_CACHE_KIB}")
            self._wdb.executescript(_SCHEMA)
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute(f"PRAGMA cache_size=-{PAGE_CACHE_KIB}")
        except sqlite3.Error as exc:
            raise OutputError(f"cannot open the resume file {self.path}: {exc}") from None
        self._cache: dict[tuple[str, str], str] = {}
        self._cache_size = cache_size
        #: id hash -> first line, of the ids first seen since the last take (written to
        #: ``seen`` by :meth:`write`, in the checkpoint's transaction: durable at the same
        #: COMMIT as an INSERT per record was)
        self._new_seen: dict[int, int] = {}
        #: (ns, key) -> value (None: forgotten) put since the last take, likewise
        self._pending: dict[tuple[str, str], str | None] = {}
        self._committing: Commit | None = None  # taken, not yet settled
        #: ``seen`` had rows when opened (a resumed job): every id not pending is looked up
        #: there. A fresh job's rows are all this run's, each marked in ``_filter`` (below):
        #: only an id whose bit is set can be in the table, the others need no SELECT.
        self._earlier_rows = self._one("SELECT 1 FROM seen LIMIT 1") is not None
        #: one bit per (hash mod 2**23) of every id this run recorded (1 MiB): set means "may be
        #: in ``seen``", clear means "is not". At 100,000 ids ~1% of new ids still need the
        #: SELECT, at 1,000,000 ~11%; a bit set for a row a failed commit lost is only that.
        self._filter = bytearray(_FILTER_BYTES)
        #: ``resolved`` had rows when opened (a resumed job): a key missing from memory is
        #: looked up there. A fresh job's rows are all this run's puts, each in ``_cache`` until
        #: evicted from it, and a key is evicted with its bit set in ``_evicted``: a key whose
        #: bit is clear is not in the table, and needs no SELECT. A new customer's lookup
        #: (``get``, and ``put``'s look for ``on_new``) took two: ~4,000 SELECTs, 7,900 fcntl
        #: locks, a 20,000-invoice run of 2,000 customers (strace).
        self._earlier_resolved = self._one("SELECT 1 FROM resolved LIMIT 1") is not None
        self._evicted = bytearray(_EVICTED_BYTES)
        #: ns -> called with (key, value) when a key of that ns is put for the first time (the
        #: run's created_refs.csv appender: it is written in the same checkpoint as the row)
        self.on_new: dict[str, Callable[[str, str], None]] = {}

    def _one(self, sql: str, *params: object) -> Any:
        """The loop connection's single-value read (:func:`bulk._checkpoint_doc.one`)."""
        return one(self._db, sql, *params)

    def close(self) -> None:
        for db in (self._db, self._wdb):
            with contextlib.suppress(sqlite3.Error):
                db.close()

    # --- the checkpoint document ----------------------------------------------------
    def load(self) -> dict[str, Any] | None:
        return stored_document(self._db)

    def checkpoint(self) -> Checkpoint | None:
        """:meth:`load`, typed: the last committed checkpoint, None before the first."""
        doc = self.load()
        return None if doc is None else Checkpoint.from_json(doc)

    def commit(self, checkpoint: dict[str, Any] | Checkpoint) -> None:
        """Write the checkpoint and every pending row in one durable transaction, here and now
        (:meth:`take`, :meth:`write`, :meth:`settle`)."""
        commit = self.take(checkpoint)
        try:
            self.write(commit)
        except BaseException:
            self.settle(commit, ok=False)
            raise
        self.settle(commit, ok=True)

    def take(self, checkpoint: dict[str, Any] | Checkpoint) -> Commit:
        """On the loop, at the checkpoint's instant: the document, serialized now (what it holds
        may change after), and every row put since the last take; later puts go to the next.
        One commit at a time: :meth:`settle` this one before the next take."""
        assert self._committing is None, "one commit at a time"
        doc = checkpoint.to_json() if isinstance(checkpoint, Checkpoint) else checkpoint
        commit = Commit(orjson.dumps(doc), self._new_seen, self._pending)
        self._new_seen, self._pending = {}, {}
        self._committing = commit
        return commit

    def write(self, commit: Commit) -> None:
        """Write ``commit`` in one durable transaction (the only fsync); any thread, never two at
        once. OutputError if SQLite refuses it (SQLITE_FULL, IOERR...): nothing of it is stored."""
        db = self._wdb
        try:
            db.execute("BEGIN")
            if commit.seen:  # in key order: each page of the table's B-tree visited once
                db.executemany("INSERT OR IGNORE INTO seen VALUES (?, ?)", sorted(commit.seen.items()))
            if commit.resolved:
                db.executemany("DELETE FROM resolved WHERE ns=? AND k=?",
                               [k for k, v in commit.resolved.items() if v is None])
                db.executemany("INSERT OR REPLACE INTO resolved VALUES (?, ?, ?)",
                               [(*k, v) for k, v in commit.resolved.items() if v is not None])
            db.execute("INSERT OR REPLACE INTO meta VALUES ('checkpoint', ?)", (commit.doc,))
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            # A failed COMMIT may leave the connection inside or outside a transaction: roll back
            # what is left, so the next write starts clean (settle puts the rows back as pending).
            try:
                if db.in_transaction:
                    db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            raise OutputError(f"cannot write the resume file {self.path}: {exc}") from None

    def settle(self, commit: Commit, *, ok: bool) -> None:
        """On the loop, after :meth:`write` returned (``ok``) or raised: a written commit's rows
        are read from the table from now on; a failed one's are pending again (they go with the
        next commit, the run stops on the error)."""
        self._committing = None
        if not ok:  # the ids are disjoint (first_line looked in the commit); later puts win
            self._new_seen = {**commit.seen, **self._new_seen}
            self._pending = {**commit.resolved, **self._pending}

    # --- duplicates -------------------------------------------------------------------
    def first_line(self, external_id: str, line_no: int) -> int:
        """Record that ``external_id`` is used on ``line_no``; return the first line that used it."""
        h = id_hash(external_id)
        first = self._new_seen.get(h)
        if first is not None:
            return first
        committing = self._committing
        if committing is not None and (first := committing.seen.get(h)) is not None:
            return first
        bit = h & _FILTER_MASK
        byte, flag = bit >> 3, 1 << (bit & 7)
        filt = self._filter
        if self._earlier_rows or filt[byte] & flag:
            first = self._one("SELECT line FROM seen WHERE h=?", h)
            if first is not None:
                return int(first)
        filt[byte] |= flag
        self._new_seen[h] = line_no
        return line_no

    # --- resolved lookups (customers, items...) ---------------------------------------
    def get(self, ns: str, key: str) -> str | None:
        # A hit is one dict lookup: no recency bookkeeping (an OrderedDict's move_to_end per hit
        # cost more than the lookup). The bound is the same (:meth:`_remember`); the oldest
        # entry goes first, and one evicted while still used is read again from the table.
        hit = self._cache.get((ns, key))
        if hit is not None:
            return hit
        for rows in (self._pending, self._committing.resolved if self._committing else None):
            if rows is not None and (ns, key) in rows:
                return rows[(ns, key)]  # put (or forgotten) since the last commit
        if not self._earlier_resolved:
            bit = hash((ns, key)) & _EVICTED_MASK
            if not self._evicted[bit >> 3] & (1 << (bit & 7)):
                return None  # this run never evicted it (nor anything sharing its bit): not in the table
        value = self._one("SELECT v FROM resolved WHERE ns=? AND k=?", ns, key)
        if value is None:
            return None
        self._remember(ns, key, value)
        return str(value)

    def put(self, ns: str, key: str, value: str) -> None:
        hook = self.on_new.get(ns)
        if hook is not None and self.get(ns, key) is None:
            hook(key, value)
        self._pending[(ns, key)] = value
        self._remember(ns, key, value)

    def forget(self, ns: str, key: str) -> None:
        """Drop a resolved value the API no longer knows (committed with the next checkpoint)."""
        self._pending[(ns, key)] = None
        self._cache.pop((ns, key), None)

    def items(self, ns: str) -> dict[str, str]:
        """Every key -> value of ``ns`` (committed or pending), e.g. what a target keeps watching."""
        found = {str(k): str(v) for k, v in self._db.execute("SELECT k, v FROM resolved WHERE ns=?", (ns,))}
        for rows in (self._committing.resolved if self._committing else {}, self._pending):
            for (n, k), v in rows.items():
                if n != ns:
                    continue
                if v is None:
                    found.pop(k, None)
                else:
                    found[k] = v
        return found

    def _remember(self, ns: str, key: str, value: str) -> None:
        cache = self._cache
        cache[(ns, key)] = value
        if len(cache) > self._cache_size:
            oldest = next(iter(cache))  # the oldest put (a dict keeps insertion order)
            del cache[oldest]
            bit = hash(oldest) & _EVICTED_MASK
            self._evicted[bit >> 3] |= 1 << (bit & 7)  # get reads it from the table again
