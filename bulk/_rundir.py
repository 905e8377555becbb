"""The run directory of an upload: opened for a run, checked to be this job's.

:func:`open_job` creates the directory (refusing one without room), opens ``state.db`` and
its last checkpoint (:class:`bulk.checkpoint.Checkpoint`), refuses a directory that belongs to
another job (another input, target or shard), and opens the outputs cut back to the sizes the
checkpoint recorded: rows written after it are redone by this run, never kept twice.
"""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass
from pathlib import Path

from .checkpoint import Checkpoint, StateStore
from .config import UploadConfig
from .errors import ConfigError, OutputError
from .marks import MarkLog
from .outputs import Outputs
from .refs import CREATED_NS, RefsFile
from .source import fingerprint

__all__ = ["SHARD_BY", "SHARD_BY_LINE_REPORTS", "OpenJob", "open_job", "places_rejects"]

#: how records are assigned to shards (recorded in each shard's checkpoint; bulk merge checks it):
#: by the target's affinity key (the customer), so one process resolves each customer, and a
#: rejected line the peek can place is reported by its customer's shard (bulk._intake)
SHARD_BY = "affinity;placed"
#: a shard job begun before placed lines were skipped: every rejected line is reported by its
#: line number's shard. Such a job keeps that rule to its end (a switch mid-job would report a
#: line twice or never: the shards stop at different watermarks).
SHARD_BY_LINE_REPORTS = "affinity"


def places_rejects(job: OpenJob) -> bool:
    """True when this job's shards skip (and report) placed lines by customer: a new job, or
    one begun with :data:`SHARD_BY`."""
    return job.checkpoint is None or job.checkpoint.shard_by == SHARD_BY


@dataclass(slots=True, frozen=True)
class OpenJob:
    """What :func:`open_job` opened; the run closes each."""

    state: StateStore
    outputs: Outputs
    refs: RefsFile  # created_refs.csv (--create-missing): a row per reference first remembered as created
    marks: MarkLog  # marks.log: write-ahead notes of reference creates
    checkpoint: Checkpoint | None  # None: a new job
    fingerprint: str  # the input's (bulk.source.fingerprint)


def open_job(config: UploadConfig, out: Path) -> OpenJob:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the run directory {out}: {exc.strerror or exc}") from None
    free = shutil.disk_usage(out).free
    if free < 16 << 20:
        raise OutputError(f"only {free >> 20} MiB free in {out}: free some space first")
    input_print = fingerprint(config.input)
    with contextlib.ExitStack() as opened:  # an error (another job's directory...) closes what is open
        state = StateStore(out)
        opened.callback(state.close)
        cp = state.checkpoint()
        if cp is not None:
            _check_same_job(config, out, cp, input_print)
        outputs = Outputs(out, cp.outputs if cp else None)
        opened.callback(outputs.close)
        refs = RefsFile(out, cp.outputs if cp else None, state.items(CREATED_NS))
        opened.callback(refs.close)
        state.on_new[CREATED_NS] = refs.add
        job = OpenJob(state, outputs, refs, MarkLog(out), cp, input_print)
        opened.pop_all()  # opened: the run closes each
    return job


def _check_same_job(c: UploadConfig, out: Path, cp: Checkpoint, input_print: str) -> None:
    if cp.input != input_print:
        raise ConfigError(
            f"the run directory {out} belongs to a different input (the file changed since "
            "its first run): use a new --out for the new file, or restore the original input"
        )
    if cp.target != c.target:
        raise ConfigError(f"{out} is a {cp.target} job: use --target {cp.target} or a new --out")
    if cp.shard != (str(c.shard) if c.shard else None):
        raise ConfigError(f"{out} was started with --shard {cp.shard}: use the same shard")
    if c.shard and cp.shard_by not in (SHARD_BY, SHARD_BY_LINE_REPORTS):
        # Earlier versions split records by external id: resuming such a shard with today's
        # split would skip some records and repeat others.
        raise ConfigError(f"{out} is a shard of a job an earlier version of bulk split by external id: "
                          "finish it with that version, or start the whole job again in new directories")
