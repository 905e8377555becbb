"""The file side of ``bulk merge``: the shards' output files copied into one set, each shard's
read only up to the sizes its checkpoint recorded (:class:`Shard`).

:func:`copy_rows` and :func:`copy_bytes` concatenate a CSV (header once) or a file verbatim;
:func:`copy_id_maps` the ID maps (a mix of the two header formats gets the current one);
:func:`merge_created_refs` and :func:`merge_timelines` merge the created references (one row per
kind and key) and the shards' seconds; :func:`count_rows` counts a merged CSV's rows. A file
shorter than its checkpoint says, or a finished shard's of another size, is a
:class:`~bulk.errors.ConfigError` (a shard directory changed after its run). Every output is
written atomically (:mod:`bulk.outputs`). What to merge, and the summary, are :mod:`bulk.merge`'s.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .checkpoint import Checkpoint
from .errors import ConfigError
from .outputs import ID_MAP_HEADER, LEGACY_ID_MAP_HEADER, atomic_writer, write_atomic
from .refs import FILE as REFS_FILE
from .refs import HEADER as REFS_HEADER
from .refs import LISTED_KINDS as REFS_KINDS
from .timeline import HEADER

__all__ = ["Shard", "copy_bytes", "copy_id_maps", "copy_rows", "count_rows", "merge_created_refs",
           "merge_timelines"]

_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class Shard:
    """One shard run directory to merge: ``index``/``count`` of its ``--shard`` and its last checkpoint."""

    dir: Path
    index: int
    count: int
    checkpoint: Checkpoint


def copy_rows(shards: list[Shard], name: str, header: list[str], out: Path) -> None:
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


def _size(s: Shard, name: str) -> int:
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


def copy_id_maps(shards: list[Shard], out: Path) -> None:
    """The ID maps: copied as bytes when every shard has the same header (a shard written
    before the ``action`` column keeps its format); a mix gets the current header, the older
    shards' rows an empty action (what they did is not known from their rows)."""
    heads = set()
    for s in shards:
        with open(s.dir / "id_map.csv", encoding="utf-8", newline="") as f:
            heads.add(tuple(next(csv.reader(f), [])))
    if len(heads) == 1 and list(next(iter(heads))) in (ID_MAP_HEADER, LEGACY_ID_MAP_HEADER):
        copy_rows(shards, "id_map.csv", list(next(iter(heads))), out)
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


def count_rows(path: Path) -> int:
    """The CSV rows of ``path``, less the header, as :mod:`csv` reads them. Without a quote or a
    carriage return in the file every row is one line, counted in C chunk by chunk; a file with
    one (a quoted field may hold a newline; a bare CR ends a row) is read as CSV. The merge
    counts every row of the job's ID map: this is its per-record cost."""
    lines, quoted, tail = 0, False, b"\n"
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            if b'"' in chunk or b"\r" in chunk:
                quoted = True
                break
            lines += chunk.count(b"\n")
            tail = chunk[-1:]
    if quoted:
        with open(path, newline="", encoding="utf-8") as f:
            return sum(1 for _ in csv.reader(f)) - 1
    return lines + (tail != b"\n") - 1  # a last row without its newline is a row too


def copy_bytes(shards: list[Shard], name: str, out: Path) -> None:
    with atomic_writer(out / name) as dst:
        for s in shards:
            with open(s.dir / name, "rb") as src:
                _copy_to(src, dst, _size(s, name))


def merge_created_refs(shards: list[Shard], out: Path) -> dict[str, int]:
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


def merge_timelines(shards: list[Shard], out: Path) -> None:
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
