"""Offline checks: ``bulk validate`` and ``bulk upload --dry-run``. Nothing is sent.

Reads the input once through the upload's own intake (``bulk._intake``: the same parse,
validation and dedupe; duplicates remembered in memory), reports every problem with its line
number and field, and (for a dry run over an existing run directory) says what the next run
would skip as already done, reconcile (possibly sent by an interrupted run) or create.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ._intake import Intake, memory_dedupe
from .checkpoint import StateStore
from .errors import InvalidRecord
from .source import InputFile
from .targets.base import Target

__all__ = ["Plan", "make_plan"]


@dataclass(slots=True)
class Plan:
    records: int = 0
    valid: int = 0
    problems: list[InvalidRecord] = field(default_factory=list)
    problem_count: int = 0
    done: int = 0  # finished by an earlier run of this job
    reconcile: int = 0  # may have been sent by an interrupted run: looked up / replayed first
    create: int = 0

    def lines(self) -> Iterator[str]:
        yield from (str(p) for p in self.problems)


async def make_plan(
    path: str, *, target: Target | None, max_line_bytes: int, run_dir: Path | None = None, keep: int = 10_000
) -> Plan:
    plan = Plan()
    watermark_line, done_beyond, reserved = 1, set(), 0
    if run_dir is not None and (run_dir / "state.db").exists():
        store = StateStore(run_dir)
        cp = store.checkpoint()
        store.close()
        if cp:
            watermark_line, done_beyond, reserved = cp.line, set(cp.done_beyond), cp.reserved
    intake = Intake(max_line_bytes=max_line_bytes, first_line=memory_dedupe(), target=target)
    src = InputFile(path)
    try:
        async for raw in src.lines(max_line_bytes=max_line_bytes):
            try:
                record = intake.screen(raw)
            except InvalidRecord as exc:
                plan.records += 1
                plan.problem_count += 1
                if len(plan.problems) < keep:
                    plan.problems.append(exc)
                continue
            if record is None:
                continue  # a blank line (a plan reads every shard's)
            plan.records += 1
            plan.valid += 1
            if raw.line_no < watermark_line or raw.line_no in done_beyond:
                plan.done += 1
            elif raw.line_no <= reserved:
                plan.reconcile += 1
            else:
                plan.create += 1
    finally:
        src.close()
    return plan
