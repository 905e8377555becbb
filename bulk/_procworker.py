"""The worker side of ``bulk upload --processes N``: what one shard worker is handed and how it runs.

The parent (:mod:`bulk.procs`) writes each worker's :class:`WorkerTask` (typed settings,
credentials included) to the worker's own pipe (forked before the event loop,
:mod:`bulk._procfork`; ``bulk.cli.forked_worker``) or to its stdin (started with ``python -c``;
``bulk.cli.worker_main``), never to argv or the environment. The worker first asks to die with
its parent (:func:`die_with_parent`, Linux ``PR_SET_PDEATHSIG``: a killed run leaves no worker
sending), reads its task (:func:`read_task_fd`, :func:`read_task`; it ends at once if the
parent is already gone), and runs its shard as an ordinary :class:`~bulk.pipeline.Run`
(:func:`run_worker`), holding the shard's directory (:mod:`bulk._runlock`: no two processes upload one shard).
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import _quotashare
from .config import UploadConfig

__all__ = ["WorkerTask", "die_with_parent", "read_task", "read_task_fd", "run_worker"]


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerTask:
    """Everything a shard worker needs: its run's config and how to build its target."""

    config: UploadConfig  # shard=K/N, out=<job>/shards/KofN, processes=1
    target: str
    base_url: str
    credentials: Mapping[str, str]
    options: Mapping[str, Any]
    default_limits: Mapping[str, float]
    parent_pid: int
    quota_share: str  # the job's quota counts (bulk._quotashare): this worker's record is its shard's

    def to_bytes(self) -> bytes:
        fields = {f.name: getattr(self.config, f.name) for f in dataclasses.fields(UploadConfig)}
        config = {k: dict(v) if isinstance(v, Mapping) else v for k, v in fields.items()}  # mappingproxy: no pickle
        return pickle.dumps({**{f.name: getattr(self, f.name) for f in dataclasses.fields(self)},
                             "config": config, "credentials": dict(self.credentials), "options": dict(self.options),
                             "default_limits": dict(self.default_limits)})

    @classmethod
    def from_bytes(cls, data: bytes) -> WorkerTask:
        doc = pickle.loads(data)  # from our own parent, over a pipe only it holds
        return cls(**{**doc, "config": UploadConfig(**doc["config"])})


def die_with_parent() -> None:
    """Linux: SIGKILL this process when the parent dies (a killed run leaves no worker sending)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def read_task() -> WorkerTask:
    """The worker's task from stdin; exits at once if the parent died before the death signal was set."""
    data = sys.stdin.buffer.read()
    if not data:
        os._exit(1)  # the parent died before handing over the task
    task = WorkerTask.from_bytes(data)
    if os.getppid() != task.parent_pid:
        os._exit(1)
    return task


def read_task_fd(fd: int) -> WorkerTask | None:
    """A forked worker's task (:mod:`bulk._procfork`) from its pipe, which it closes; None when
    the pipe ended without one (the parent closed an unused worker, or died)."""
    chunks = []
    with open(fd, "rb", closefd=True) as pipe:
        while chunk := pipe.read():
            chunks.append(chunk)
    if not chunks:
        return None
    task = WorkerTask.from_bytes(b"".join(chunks))
    return task if os.getppid() == task.parent_pid else None


async def run_worker(task: WorkerTask) -> Any:
    """One shard of the job: an ordinary run of the pipeline (the CLI reports its result)."""
    from ._runlock import hold_dir
    from .pipeline import Run
    from .targets import get_target

    cls = get_target(task.target)
    target = cls(base_url=task.base_url, credentials=dict(task.credentials), options=task.options)
    target.default_limits = dict(task.default_limits)  # the parent's, as the CLI set it
    # A worker of an earlier run of this job that still lives (no PR_SET_PDEATHSIG here) holds the shard.
    lock = await hold_dir(task.config.out)
    try:
        assert task.config.shard is not None
        with _quotashare.bind(Path(task.quota_share), task.config.shard.index):
            return await Run(task.config, target, progress=None).execute()
    finally:
        if lock is not None:
            lock.close()
