"""The run directory's files as the HTML report needs them (:func:`load_run`), read in bounded memory.

- ``summary.json`` is required (a directory without it is not a run directory: :class:`ConfigError`);
- ``timeline.csv`` (one row per second, header ``time,elapsed_s,requests_started,
  requests_finished,invoices_created,throttled,errors,p50_ms,p99_ms``) becomes at most
  MAX_POINTS points over run time: a resumed run (``elapsed_s`` restarts) continues the earlier
  runs' time, with a mark where it starts; malformed rows are counted and skipped;
- ``failed_reasons.csv`` is grouped by reason: kind, stage, field, HTTP status and the message
  with its quoted values folded to ``'…'`` (``'a@x'`` and ``'b@y'`` are one reason), each with
  its count and first lines.

Absent optional files are ``None``, never an error. Text is returned as read: escaping is the
renderer's job (:mod:`bulk.report`).
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from .errors import ConfigError

__all__ = ["MAX_POINTS", "MAX_REASONS", "TIMELINE_FIELDS", "Reason", "RunFiles", "Timeline", "load_run"]

MAX_POINTS = 600  # a chart's points at most: longer timelines are averaged into buckets of seconds
MAX_REASONS = 10_000  # distinct failure reasons kept while reading; the rest count as "other"
EXAMPLES = 5  # lines listed per failure reason

TIMELINE_FIELDS = ("requests_started", "requests_finished", "invoices_created", "throttled", "errors")
_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'")


@dataclass(slots=True)
class Reason:
    key: tuple[str, str, str, str, str]  # kind, stage, field, http_status, folded message
    count: int = 0
    examples: list[tuple[str, str, str]] = field(default_factory=list)  # line, external id, message


@dataclass(slots=True)
class Timeline:
    xs: list[float]  # run-time seconds (resumed runs continue the earlier runs' time)
    columns: dict[str, list[float]]  # TIMELINE_FIELDS, per point (per second, averaged in buckets)
    p50: list[float | None]
    p99: list[float | None]
    seconds: int  # rows read
    bucket: int  # seconds per point
    resumes: list[tuple[float, str]]  # (x, wall-clock time) where a resumed run starts
    skipped: int  # malformed rows


@dataclass(slots=True)
class RunFiles:
    summary: dict[str, Any]
    timeline: Timeline | None
    reasons: list[Reason] | None  # None: no failed_reasons.csv
    reason_rows: int = 0
    other_reasons: int = 0  # rows whose reason did not fit in MAX_REASONS


def load_run(run_dir: Path) -> RunFiles:
    """Read the run directory; :class:`ConfigError` if it is missing or is not a run directory."""
    if not run_dir.exists():
        raise ConfigError(f"{run_dir} does not exist: give the --out directory of a bulk run")
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir} is not a directory: give the --out directory of a bulk run")
    path = run_dir / "summary.json"
    try:
        summary = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise ConfigError(f"{run_dir} is not a bulk run directory (no summary.json): give the --out "
                          "directory of a bulk upload or bulk merge") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc}): not a bulk summary") from None
    if not isinstance(summary, dict) or not isinstance(summary.get("records"), dict):
        raise ConfigError(f"{path} is not a bulk summary (no records counts)")
    files = RunFiles(summary, _read_timeline(run_dir / "timeline.csv"), None)
    _read_reasons(run_dir / "failed_reasons.csv", files)
    return files


def _rows(path: Path) -> Iterator[dict[str, str]] | None:
    try:
        f = open(path, newline="", encoding="utf-8", errors="replace")  # noqa: SIM115 - closed by the generator
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None

    def rows() -> Iterator[dict[str, str]]:
        with f:
            yield from csv.DictReader(f)

    return rows()


def _seconds(rows: Iterator[dict[str, str]], t: Timeline) -> Iterator[tuple[float, dict[str, float], float | None,
                                                                          float | None]]:
    """Each well-formed row as (run-time x, counts, p50, p99); malformed rows are counted in
    ``t.skipped``, and where ``elapsed_s`` restarts (a resumed run) a mark goes in ``t.resumes``."""
    offset, last_x = 0.0, None
    for row in rows:
        try:
            elapsed = float(row["elapsed_s"])
            counts = {name: float(row[name] or 0) for name in TIMELINE_FIELDS}
            p50 = float(row["p50_ms"]) if row.get("p50_ms") else None
            p99 = float(row["p99_ms"]) if row.get("p99_ms") else None
        except (KeyError, TypeError, ValueError):
            t.skipped += 1
            continue
        if not all(map(math.isfinite, [elapsed, *counts.values()])):
            t.skipped += 1
            continue
        x = offset + elapsed
        if last_x is not None and x <= last_x:  # elapsed_s restarted: a resumed run's own seconds
            offset = last_x + 1 - elapsed
            x = last_x + 1
            t.resumes.append((x, row.get("time") or ""))
        last_x = x
        yield x, counts, p50, p99


def _read_timeline(path: Path) -> Timeline | None:
    """The timeline in at most MAX_POINTS points. Two passes over the file (count, then bucket),
    so a run of days needs no more memory than one of minutes."""
    rows = _rows(path)
    if rows is None:
        return None
    t = Timeline([], {name: [] for name in TIMELINE_FIELDS}, [], [], 0, 1, [], 0)
    t.seconds = sum(1 for _ in _seconds(rows, t))
    t.bucket = max(1, math.ceil(t.seconds / MAX_POINTS))
    t.resumes.clear()
    t.skipped = 0
    part: list[tuple[float, dict[str, float], float | None, float | None]] = []
    for second in _seconds(_rows(path) or iter(()), t):
        part.append(second)
        if len(part) == t.bucket:
            _add_point(t, part)
            part = []
    if part:
        _add_point(t, part)
    return t


def _add_point(t: Timeline, part: list[tuple[float, dict[str, float], float | None, float | None]]) -> None:
    t.xs.append(part[0][0])
    for name in TIMELINE_FIELDS:
        t.columns[name].append(sum(p[1][name] for p in part) / len(part))
    # Percentiles cannot be combined exactly from per-second ones: a point shows the median
    # second's p50 and the worst second's p99, so no spike is smoothed away.
    p50s = sorted(p[2] for p in part if p[2] is not None)
    p99s = [p[3] for p in part if p[3] is not None]
    t.p50.append(p50s[len(p50s) // 2] if p50s else None)
    t.p99.append(max(p99s) if p99s else None)


def _fold(message: str) -> str:
    return _QUOTED.sub("'…'", message)


def _read_reasons(path: Path, files: RunFiles) -> None:
    rows = _rows(path)
    if rows is None:
        return
    groups: dict[tuple[str, str, str, str, str], Reason] = {}
    for row in rows:
        files.reason_rows += 1
        message = row.get("message") or ""
        key = (row.get("kind") or "", row.get("stage") or "", row.get("field") or "",
               row.get("http_status") or "", _fold(message))
        reason = groups.get(key)
        if reason is None:
            if len(groups) >= MAX_REASONS:
                files.other_reasons += 1
                continue
            reason = groups[key] = Reason(key)
        reason.count += 1
        if len(reason.examples) < EXAMPLES:
            reason.examples.append((row.get("line") or "", row.get("external_id") or "", message))
    files.reasons = sorted(groups.values(), key=lambda r: (-r.count, r.key))
