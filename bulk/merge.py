"""``bulk merge``: combine the run directories of ``--shard K/N`` runs into one set of outputs.

The N shards of one input split its records by a stable hash of the external id (and its
invalid lines by line number), so every record belongs to exactly one shard and the shards'
outputs are disjoint. Merging therefore concatenates and adds up:

- ``id_map.csv`` and ``failed_reasons.csv``: the header once, then every shard's rows in
  shard order (line numbers are the input's, the same for every shard);
- ``failed.ndjson``: every shard's lines, verbatim, ready to fix and re-feed;
- ``created_refs.csv`` and the summary's ``created_refs``: the shards' rows, once per kind and
  key (shards share references), counted from those rows;
- ``summary.json``: the counts, request counters and money totals summed (totals exactly, as
  :class:`~bulk.tally.Tally` merges them), elapsed time the longest shard's (they ran side by
  side), and one entry per shard;
- ``latency.hdr.json`` and the summary's ``latency_ms`` / ``status_codes`` / ``late_starts``:
  the shards' histograms added (HDR histograms add exactly: the percentiles are those of every
  shard's requests together) and their status counts summed. A shard's ``timeline.csv`` stays
  in its own directory (the shards' seconds are not merged).

It refuses, with a :class:`~bulk.errors.ConfigError` saying what to do, a set that is not one
complete job: directories that are not finished shard runs, shards of different inputs,
targets or shard counts, a shard given twice, or a missing one. Each output is written
atomically; the shards' own directories are only read. The merged directory is a report,
not a job: it has no ``state.db`` and cannot be resumed.

``bulk upload --processes N`` (``bulk.procs``) merges its own shards with ``partial=True``
after every run, finished or not: a shard not finished (or not started) is merged as far as
its last checkpoint, and the merged summary says ``complete: false`` until all are done.
Every shard's files are copied up to the sizes its checkpoint recorded, never beyond: rows a
killed shard wrote after its last checkpoint are not part of the job yet (its resume redoes
them).

This module checks the set and builds the summary; the copying of the files is
:mod:`bulk._mergefiles`'.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from . import _summary
from ._mergefiles import Shard as _Shard
from ._mergefiles import copy_bytes as _copy_bytes
from ._mergefiles import copy_id_maps as _copy_id_maps
from ._mergefiles import copy_rows as _copy_rows
from ._mergefiles import count_rows as _count_rows
from ._mergefiles import merge_created_refs as _merge_created_refs
from ._mergefiles import merge_timelines as _merge_timelines
from .checkpoint import load_checkpoint
from .errors import ConfigError
from .latency import Latency
from .outputs import REASONS_HEADER, write_atomic
from .tally import Tally

__all__ = ["merge_runs"]


def _load(run_dir: Path, partial: bool = False) -> _Shard | None:
    if partial and (not run_dir.is_dir() or load_checkpoint(run_dir) is None):
        return None  # a shard of a --processes run that has no checkpoint yet: nothing to merge
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir} is not a directory: give the --out directories of the shard runs")
    cp = load_checkpoint(run_dir)
    if cp is None:
        raise ConfigError(f"{run_dir} is not a bulk run directory (no state.db checkpoint)")
    shard = cp.shard
    if not shard:
        raise ConfigError(f"{run_dir} was not run with --shard K/N: only shard runs can be merged")
    index, count = (int(part) for part in str(shard).split("/"))
    if not cp.complete and not partial:
        raise ConfigError(f"shard {shard} in {run_dir} has not finished: run its upload command again "
                          "(it resumes), then merge")
    return _Shard(run_dir, index, count, cp)


def _check_one_job(shards: list[_Shard], partial: bool = False) -> None:
    first = shards[0]
    for s in shards[1:]:
        # shard_by: shards split by different rules (an earlier version split by external id)
        # would hold some records twice and miss others
        for key, what in (("input", "input file"), ("target", "target"), ("shard_by", "split rule")):
            theirs, ours = getattr(s.checkpoint, key), getattr(first.checkpoint, key)
            if theirs != ours:
                raise ConfigError(f"{s.dir} and {first.dir} are shards of different {what}s "
                                  f"({theirs} vs {ours}): merge the shards of one job at a time")
        if s.count != first.count:
            raise ConfigError(f"{s.dir} is shard {s.index}/{s.count} but {first.dir} is {first.index}/{first.count}: "
                              "every shard of a job must use the same N")
    seen: dict[int, Path] = {}
    for s in shards:
        if s.index in seen:
            raise ConfigError(f"shard {s.index}/{s.count} is given twice ({seen[s.index]} and {s.dir})")
        seen[s.index] = s.dir
    missing = [k for k in range(first.count) if k not in seen]
    if missing and not partial:
        listed = ", ".join(f"{k}/{first.count}" for k in missing)
        raise ConfigError(f"incomplete set: shard{'s' if len(missing) > 1 else ''} {listed} missing; "
                          f"give all {first.count} shard directories")


def merge_runs(run_dirs: Sequence[Path], out: Path, *, partial: bool = False,
               processes: int | None = None, this_run: dict[str, Any] | None = None) -> dict[str, Any]:
    """Merge the shard run directories ``run_dirs`` into ``out``; return the merged summary.

    ``partial``: merge what the shards have checkpointed so far (see the module docstring);
    ``processes``, ``this_run``: the merged summary's sections of a ``bulk upload --processes N``
    run (``bulk.procs``); left out when None.
    """
    if not run_dirs:
        raise ConfigError("give the run directories of the shards to merge")
    shards = sorted((s for d in run_dirs if (s := _load(Path(d), partial)) is not None), key=lambda s: s.index)
    if not shards:
        raise ConfigError("none of the shards has a checkpoint yet: nothing to merge")
    _check_one_job(shards, partial)
    resolved_out = out.resolve()
    if any(s.dir.resolve() == resolved_out for s in shards):
        raise ConfigError(f"--out {out} is one of the shard directories: merge into a new directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create {out}: {exc.strerror or exc}") from None

    tally = Tally()
    traffic = {"requests": 0, "retries": 0, "throttled": 0}
    per_shard = []
    latency = Latency()
    late_starts = 0
    for s in shards:
        cp = s.checkpoint
        t = Tally.from_json(cp.tally)
        tally.merge(t)
        if cp.latency is not None:
            latency.add_json(cp.latency)
        late_starts += cp.late_starts
        for key in traffic:
            traffic[key] += int(cp.traffic.get(key, 0))
        per_shard.append({"shard": f"{s.index}/{s.count}", "dir": str(s.dir), "read": t.read, "created": t.created,
                          "rejected": t.rejected, "failed": t.failed, "uncertain": t.uncertain,
                          "elapsed_seconds": round(cp.elapsed, 3)})

    _copy_id_maps(shards, out)
    _copy_rows(shards, "failed_reasons.csv", REASONS_HEADER, out)
    _copy_bytes(shards, "failed.ndjson", out)
    created_rows = _count_rows(out / "id_map.csv")
    if created_rows != tally.mapped:
        raise ConfigError(f"the shards' id_map.csv files hold {created_rows} rows but their checkpoints count "
                          f"{tally.mapped} invoices (created, updated, unchanged): a shard directory was changed "
                          "after its run")

    created_refs = _merge_created_refs(shards, out)

    elapsed = max(s.checkpoint.elapsed for s in shards)
    summaries = [_summary_of(s.dir) for s in shards]
    summary = _summary.build(
        started_at=min((x["started_at"] for x in summaries if x.get("started_at")), default=None),
        ended_at=max((x["ended_at"] for x in summaries if x.get("ended_at")), default=None),
        target=shards[0].checkpoint.target, input=summaries[0].get("input"),
        where={"input_fingerprint": shards[0].checkpoint.input, "shards": per_shard},
        complete=len(shards) == shards[0].count and all(s.checkpoint.complete for s in shards),
        processes=processes, tally=tally,
        already_done=sum(int(x.get("records", {}).get("already_done", 0)) for x in summaries),
        created_refs=created_refs, reconciled=_merged_reconciled(summaries) or None, traffic=traffic, elapsed=elapsed,
        this_run=this_run)
    _summary.add_latency(summary, latency, late_starts, summaries[0].get("arrival_rate"))
    hdr = {k: v for k, v in latency.to_json().items() if not k.startswith("_")}
    write_atomic(out / "latency.hdr.json", orjson.dumps(hdr) + b"\n")
    _merge_timelines(shards, out)
    write_atomic(out / "summary.json", orjson.dumps(summary, option=orjson.OPT_INDENT_2) + b"\n")
    return summary


def _summary_of(run_dir: Path) -> dict[str, Any]:
    try:
        data = orjson.loads((run_dir / "summary.json").read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _merged_reconciled(summaries: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The shards' ``reconciled`` sections (what a target's end-of-run check found): counts
    summed, notes kept one per line, so a warning of one shard is not lost in the merge."""
    parts = [x["reconciled"] for x in summaries if isinstance(x.get("reconciled"), dict)]
    if not parts:
        return None
    merged: dict[str, Any] = {}
    notes: list[str] = []
    for part in parts:
        for key, value in part.items():
            if key == "note":
                if value:
                    notes.append(str(value))
            elif isinstance(value, int) and not isinstance(value, bool):
                merged[key] = merged.get(key, 0) + value
            else:
                merged.setdefault(key, value)
    if notes:
        merged["note"] = "\n".join(notes)
    return merged
