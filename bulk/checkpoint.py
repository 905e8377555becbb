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
"""

from __future__ import annotations

import hashlib
import sqlite3
import struct
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from .errors import OutputError

__all__ = ["VERSION", "Checkpoint", "StateStore", "id_hash", "load_checkpoint", "read_checkpoint"]

#: the checkpoint document's format (``Checkpoint.version``)
VERSION = 1

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
#: microseconds); an entry costs ~280 bytes (key tuple, id strings, the OrderedDict's link).
#: 20,000 of them were ~5.6 MB of the 64 MB budget at 1,000,000 records (100,000 customers:
#: the cache was full from ~25,000 records on, and hit only 20% of lookups anyway).
CACHE_ENTRIES = 2_048

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


@dataclass(slots=True, kw_only=True)
class Checkpoint:
    """The checkpoint document (``meta['checkpoint']``): what a run writes, a resumed run, a
    dry run (``bulk.plan``) and a merge (``bulk.merge``) read.

    :meth:`to_json` / :meth:`from_json` are the file format (JSON keys as the fields, in this
    order); a key missing from an earlier version's document reads as the field's default.
    """

    version: int = VERSION
    target: str | None = None
    input: str | None = None  # the input's fingerprint (bulk.source.fingerprint)
    shard: str | None = None  # "K/N" of a --shard run
    shard_by: str | None = None  # how a shard's records were chosen (bulk.pipeline.SHARD_BY)
    offset: int = 0  # the watermark: every record before this byte offset ...
    line: int = 1  # ... and this line number is finished
    done_beyond: list[int] = field(default_factory=list)  # lines finished beyond the watermark
    progress: dict[str, Any] = field(default_factory=dict)  # line -> step state of a record in flight
    reserved: int = 0  # write ahead: records up to this line may have been sent
    tally: dict[str, Any] = field(default_factory=dict)  # bulk.tally.Tally.to_json
    traffic: dict[str, int] = field(default_factory=dict)  # requests, retries, throttled
    elapsed: float = 0.0  # seconds, every run of the job
    outputs: dict[str, int] | None = None  # file -> size at this checkpoint (None: a version that kept none)
    complete: bool = False
    started_at: str | None = None  # when the job's first run started (UTC)
    latency: dict[str, Any] | None = None  # bulk.measure.Measure.snapshot's part
    late_starts: int = 0
    timeline: dict[str, Any] | None = None

    def measured(self) -> dict[str, Any]:
        """The part :meth:`bulk.measure.Measure.restore` reads."""
        return {"latency": self.latency, "late_starts": self.late_starts, "timeline": self.timeline}

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version, "target": self.target, "input": self.input, "shard": self.shard,
            "shard_by": self.shard_by, "watermark": [self.offset, self.line], "done_beyond": self.done_beyond,
            "progress": self.progress, "reserved": self.reserved, "tally": self.tally, "traffic": self.traffic,
            "elapsed": self.elapsed, "outputs": self.outputs, "complete": self.complete,
            "started_at": self.started_at, "latency": self.latency, "late_starts": self.late_starts,
            "timeline": self.timeline,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Checkpoint:
        offset, line = doc.get("watermark") or (0, 1)
        latency = doc.get("latency")
        return cls(
            version=int(doc.get("version", VERSION)), target=doc.get("target"), input=doc.get("input"),
            shard=doc.get("shard"), shard_by=doc.get("shard_by"), offset=int(offset), line=int(line),
            done_beyond=list(doc.get("done_beyond") or ()), progress=dict(doc.get("progress") or {}),
            reserved=int(doc.get("reserved") or 0), tally=dict(doc.get("tally") or {}),
            traffic=dict(doc.get("traffic") or {}), elapsed=float(doc.get("elapsed") or 0.0),
            outputs=doc.get("outputs"), complete=bool(doc.get("complete")), started_at=doc.get("started_at"),
            latency=latency if isinstance(latency, dict) else None, late_starts=int(doc.get("late_starts") or 0),
            timeline=doc.get("timeline"),
        )


def load_checkpoint(run_dir: Path) -> Checkpoint | None:
    """:func:`read_checkpoint`, typed."""
    doc = read_checkpoint(run_dir)
    return None if doc is None else Checkpoint.from_json(doc)


def read_checkpoint(run_dir: Path) -> dict[str, Any] | None:
    """The checkpoint document of ``run_dir/state.db``, opened read-only (the job is not
    changed); None when the directory has no resume file or no checkpoint yet."""
    path = run_dir / "state.db"
    if not path.is_file():
        return None
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            row = db.execute("SELECT v FROM meta WHERE k='checkpoint'").fetchone()
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise OutputError(f"cannot read the resume file {path}: {exc}") from None
    return orjson.loads(row[0]) if row else None


class StateStore:
    """Owns ``state.db``. All methods are synchronous and cheap; commit() is the only fsync."""

    def __init__(self, run_dir: Path, *, cache_size: int = CACHE_ENTRIES) -> None:
        self.path = run_dir / "state.db"
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(f"PRAGMA cache_size=-{PAGE_CACHE_KIB}")
            self._db.executescript(_SCHEMA)
            self._db.execute("BEGIN")
        except sqlite3.Error as exc:
            raise OutputError(f"cannot open the resume file {self.path}: {exc}") from None
        self._cache: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._cache_size = cache_size
        #: id hash -> first line, of the ids first seen since the last commit (written to
        #: ``seen`` by :meth:`commit`, in the checkpoint's transaction: durable at the same
        #: COMMIT as an INSERT per record was)
        self._new_seen: dict[int, int] = {}
        #: ``seen`` had rows when opened (a resumed job): every id not pending is looked up
        #: there. A fresh job's rows are all this run's, each marked in ``_filter`` (below):
        #: only an id whose bit is set can be in the table, the others need no SELECT.
        self._earlier_rows = self._db.execute("SELECT 1 FROM seen LIMIT 1").fetchone() is not None
        #: one bit per (hash mod 2**23) of every id this run recorded (1 MiB): set means "may be
        #: in ``seen``", clear means "is not". At 100,000 ids ~1% of new ids still need the
        #: SELECT, at 1,000,000 ~11%; a bit set for a row a failed commit lost is only that.
        self._filter = bytearray(_FILTER_BYTES)
        #: ns -> called with (key, value) when a key of that ns is put for the first time (the
        #: run's created_refs.csv appender: it is written in the same checkpoint as the row)
        self.on_new: dict[str, Callable[[str, str], None]] = {}

    def close(self) -> None:
        try:
            self._db.execute("ROLLBACK") if self._db.in_transaction else None
            self._db.close()
        except sqlite3.Error:
            pass

    # --- the checkpoint document ----------------------------------------------------
    def load(self) -> dict[str, Any] | None:
        row = self._db.execute("SELECT v FROM meta WHERE k='checkpoint'").fetchone()
        return orjson.loads(row[0]) if row else None

    def checkpoint(self) -> Checkpoint | None:
        """:meth:`load`, typed: the last committed checkpoint, None before the first."""
        doc = self.load()
        return None if doc is None else Checkpoint.from_json(doc)

    def commit(self, checkpoint: dict[str, Any] | Checkpoint) -> None:
        """Write the checkpoint and every pending row in one durable transaction."""
        doc = checkpoint.to_json() if isinstance(checkpoint, Checkpoint) else checkpoint
        try:
            if self._new_seen:  # in key order: each page of the table's B-tree visited once
                self._db.executemany("INSERT OR IGNORE INTO seen VALUES (?, ?)", sorted(self._new_seen.items()))
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('checkpoint', ?)", (orjson.dumps(doc),))
            self._db.execute("COMMIT")
            self._new_seen.clear()
            self._db.execute("BEGIN")
        except sqlite3.Error as exc:
            # A failed COMMIT (SQLITE_FULL, IOERR...) may leave the connection inside or outside
            # a transaction: roll back what is left, open a new one, so the store stays usable and
            # consistent (this checkpoint's rows stay pending; the run stops on the error). The
            # ROLLBACK also drops the resolved ids put since the last commit: forget the cache, so
            # a lookup reads what is stored (a missing id is looked up at the API again, never
            # created twice: resolving looks before it creates).
            self._cache.clear()
            try:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                self._db.execute("BEGIN")
            except sqlite3.Error:
                pass
            raise OutputError(f"cannot write the resume file {self.path}: {exc}") from None

    # --- duplicates -------------------------------------------------------------------
    def first_line(self, external_id: str, line_no: int) -> int:
        """Record that ``external_id`` is used on ``line_no``; return the first line that used it."""
        h = id_hash(external_id)
        first = self._new_seen.get(h)
        if first is not None:
            return first
        bit = h & _FILTER_MASK
        byte, flag = bit >> 3, 1 << (bit & 7)
        filt = self._filter
        if self._earlier_rows or filt[byte] & flag:
            row = self._db.execute("SELECT line FROM seen WHERE h=?", (h,)).fetchone()
            if row is not None:
                return int(row[0])
        filt[byte] |= flag
        self._new_seen[h] = line_no
        return line_no

    # --- resolved lookups (customers, items...) ---------------------------------------
    def get(self, ns: str, key: str) -> str | None:
        hit = self._cache.get((ns, key))
        if hit is not None:
            self._cache.move_to_end((ns, key))
            return hit
        row = self._db.execute("SELECT v FROM resolved WHERE ns=? AND k=?", (ns, key)).fetchone()
        if row is None:
            return None
        self._remember(ns, key, row[0])
        return str(row[0])

    def put(self, ns: str, key: str, value: str) -> None:
        hook = self.on_new.get(ns)
        if hook is not None and self.get(ns, key) is None:
            hook(key, value)
        self._db.execute("INSERT OR REPLACE INTO resolved VALUES (?, ?, ?)", (ns, key, value))
        self._remember(ns, key, value)

    def forget(self, ns: str, key: str) -> None:
        """Drop a resolved value the API no longer knows (committed with the next checkpoint)."""
        self._db.execute("DELETE FROM resolved WHERE ns=? AND k=?", (ns, key))
        self._cache.pop((ns, key), None)

    def items(self, ns: str) -> dict[str, str]:
        """Every key -> value of ``ns`` (committed or pending), e.g. what a target keeps watching."""
        rows = self._db.execute("SELECT k, v FROM resolved WHERE ns=?", (ns,)).fetchall()
        return {str(k): str(v) for k, v in rows}

    def _remember(self, ns: str, key: str, value: str) -> None:
        self._cache[(ns, key)] = value
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
