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
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from . import _summary
from .checkpoint import Checkpoint, load_checkpoint
from .errors import ConfigError
from .latency import Latency
from .outputs import ID_MAP_HEADER, LEGACY_ID_MAP_HEADER, REASONS_HEADER, atomic_writer, write_atomic
from .refs import FILE as REFS_FILE
from .refs import HEADER as REFS_HEADER
from .refs import LISTED_KINDS as REFS_KINDS
from .tally import Tally
from .timeline import HEADER

__all__ = ["merge_runs"]

_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class _Shard:
    dir: Path
    index: int
    count: int
    checkpoint: Checkpoint


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


def _copy_rows(shards: list[_Shard], name: str, header: list[str], out: Path) -> None:
    """Header once, then each shard's rows (its own header skipped), copied as bytes."""
    head = io.StringIO()
    csv.writer(head, lineterminator="\n").writerow(header)
    header_line = head.getvalue().encode()
    with atomic_writer(out / name) as dst:
        dst.write(header_line)
        for s in shards:
            with open(s.dir / name, "rb") as src:
                first = src.readline()
                if first and first != header_line:
                    raise ConfigError(f"{s.dir / name} does not start with the expected header: not a bulk output")
                _copy_to(src, dst, _size(s, name) - len(first))


def _size(s: _Shard, name: str) -> int:
    """The bytes of ``name`` the shard's checkpoint counts; a finished shard has no others."""
    sizes = s.checkpoint.outputs or {}
    if name not in sizes:  # a checkpoint of an earlier version, which kept no sizes: the whole file
        return (s.dir / name).stat().st_size
    size = int(sizes[name])
    if s.checkpoint.complete and (s.dir / name).stat().st_size != size:
        raise ConfigError(f"{s.dir / name} is not the size its finished run left ({size} bytes): a shard directory "
                          "was changed after its run")
    return size


def _copy_to(src: Any, dst: Any, size: int) -> None:
    """Copy ``size`` bytes (what the shard's checkpoint counts as written) from ``src``."""
    while size > 0:
        chunk = src.read(min(_CHUNK, size))
        if not chunk:
            raise ConfigError(f"{src.name} is shorter than its checkpoint says: a shard directory was changed "
                              "after its run")
        dst.write(chunk)
        size -= len(chunk)


def _copy_id_maps(shards: list[_Shard], out: Path) -> None:
    """The ID maps: copied as bytes when every shard has the same header (a shard written
    before the ``action`` column keeps its format); a mix gets the current header, the older
    shards' rows an empty action (what they did is not known from their rows)."""
    heads = set()
    for s in shards:
        with open(s.dir / "id_map.csv", encoding="utf-8", newline="") as f:
            heads.add(tuple(next(csv.reader(f), [])))
    if len(heads) == 1 and list(next(iter(heads))) in (ID_MAP_HEADER, LEGACY_ID_MAP_HEADER):
        _copy_rows(shards, "id_map.csv", list(next(iter(heads))), out)
        return
    with atomic_writer(out / "id_map.csv") as dst:
        text = io.TextIOWrapper(dst, encoding="utf-8", newline="", write_through=True)
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(ID_MAP_HEADER)
        for s in shards:
            with open(s.dir / "id_map.csv", encoding="utf-8", newline="") as src:
                rows = csv.reader(src)
                head = next(rows, [])
                if head not in (ID_MAP_HEADER, LEGACY_ID_MAP_HEADER):
                    raise ConfigError(f"{s.dir / 'id_map.csv'} does not start with the expected header: "
                                      "not a bulk output")
                for row in rows:
                    writer.writerow(row + [""] * (len(ID_MAP_HEADER) - len(row)))
        text.flush()
        text.detach()


def _count_rows(path: Path) -> int:
    with open(path, newline="", encoding="utf-8") as f:
        return sum(1 for _ in csv.reader(f)) - 1  # CSV rows (a quoted field may hold a newline), less the header


def _copy_bytes(shards: list[_Shard], name: str, out: Path) -> None:
    with atomic_writer(out / name) as dst:
        for s in shards:
            with open(s.dir / name, "rb") as src:
                _copy_to(src, dst, _size(s, name))


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


def _merge_created_refs(shards: list[_Shard], out: Path) -> dict[str, int]:
    """One ``created_refs.csv``: every shard's rows (each read up to its checkpoint's size),
    one per kind and key: shards share references (an item many invoices name), and a shard
    whose create found another shard's object may list it too. The counts are those rows'."""
    rows: dict[tuple[str, str], list[str]] = {}
    for s in shards:
        if not (s.dir / REFS_FILE).is_file():
            continue  # a shard of a version before --create-missing: it created none it listed
        with open(s.dir / REFS_FILE, "rb") as f:
            data = f.read(_size(s, REFS_FILE))
        reader = csv.reader(io.StringIO(data.decode("utf-8"), newline=""))
        head = next(reader, None)
        if head is not None and head != REFS_HEADER:
            raise ConfigError(f"{s.dir / REFS_FILE} does not start with the expected header: not a bulk output")
        for row in reader:
            if len(row) == len(REFS_HEADER):
                rows.setdefault((row[0], row[1]), row)
    body = io.StringIO()
    writer = csv.writer(body, lineterminator="\n")
    writer.writerow(REFS_HEADER)
    writer.writerows(rows.values())
    write_atomic(out / REFS_FILE, body.getvalue().encode("utf-8"))
    counts = dict.fromkeys(REFS_KINDS, 0)
    for kind, _ in rows:
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def _merge_timelines(shards: list[_Shard], out: Path) -> None:
    """One timeline.csv of the shards' seconds: the rows of one wall-clock second added up
    (counts exact, so the sums still equal the merged summary); its p50/p99 are the largest
    of the shards' for that second (an upper bound: the shards' requests are not re-ranked).
    Each shard's file is read only up to the size its checkpoint covers."""
    seconds: dict[str, list[Any]] = {}
    for s in shards:
        path = s.dir / "timeline.csv"
        keep = (s.checkpoint.timeline or {}).get("size")
        try:
            with open(path, "rb") as f:
                data = f.read() if keep is None else f.read(int(keep))
        except OSError:
            continue
        for line in data.decode("utf-8", "replace").splitlines()[1:]:
            cells = line.split(",")
            if len(cells) != 9:
                continue
            row = seconds.setdefault(cells[0], [cells[0], int(cells[1]), 0, 0, 0, 0, 0, "", ""])
            row[1] = min(row[1], int(cells[1]))
            for i in range(2, 7):
                row[i] += int(cells[i])
            for i in (7, 8):
                if cells[i] and (not row[i] or float(cells[i]) > float(row[i])):
                    row[i] = cells[i]
    if not seconds:
        return
    body = "".join(",".join(map(str, seconds[t])) + "\n" for t in sorted(seconds))
    write_atomic(out / "timeline.csv", HEADER + body.encode())


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
