"""The checkpoint document (``meta['checkpoint']`` of ``state.db``): its fields and file format,
and a read-only look at a run directory's last one. :mod:`bulk.checkpoint` re-exports these;
its :class:`~bulk.checkpoint.StateStore` writes them."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from .errors import OutputError

__all__ = ["VERSION", "Checkpoint", "load_checkpoint", "one", "read_checkpoint", "stored_document"]

#: the checkpoint document's format (``Checkpoint.version``)
VERSION = 1


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
            return stored_document(db)
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise OutputError(f"cannot read the resume file {path}: {exc}") from None


def one(db: sqlite3.Connection, sql: str, *params: object) -> Any:
    """The first column of the first row ``sql`` selects (``params`` bound), None for no row."""
    row = db.execute(sql, params).fetchone()
    return None if row is None else row[0]


def stored_document(db: sqlite3.Connection) -> dict[str, Any] | None:
    """The checkpoint document ``db`` (a ``state.db``) holds, None before the first checkpoint."""
    value = one(db, "SELECT v FROM meta WHERE k='checkpoint'")
    return None if value is None else orjson.loads(value)
