"""``bulk upload --processes N``: one job uploaded by N shard workers, merged automatically.

This is the one multi-process mechanism: the N processes are the N ``--shard K/N`` runs of
the job, run side by side on this machine, and their outputs are merged into the job's
directory by :func:`bulk.merge.merge_runs` after every run::

    <out>/processes.json          {"processes": N}: a resumed run keeps the job's N
    <out>/quota.bin               the processes' shared count of a daily quota (bulk._quotashare)
    <out>/shards/KofN/            shard K's own run directory (state.db, outputs): a whole job
    <out>/id_map.csv, failed.ndjson, failed_reasons.csv, summary.json
                                  the shards merged, as far as their last checkpoints

Each worker is an ordinary :class:`~bulk.pipeline.Run` (the same worker loop, checkpoints and
resume as one process), so exactly-once and resume are the shards': a killed job resumed with
the same command resumes every shard. A shard owns the records whose customer key
(``target.affinity``) hashes to it, so a customer is resolved by one process, and takes 1/N
of every rate limit (:meth:`~bulk.config.UploadConfig.pacing_limits`) and of ``--concurrency``,
and a daily quota's gate counts all the processes' requests (:mod:`bulk._quotashare`):
together the processes stay within the API's limits.

A worker is forked before the event loop starts (:mod:`bulk._procfork`: the CLI decides N
first) and reads its :class:`WorkerTask` (typed settings, credentials included) from its own
pipe; where there is no such pool, it is started with ``python -c`` and reads the task from its
stdin. Never from argv or the environment. It dies with its
parent (Linux ``PR_SET_PDEATHSIG``), runs in its own session (a terminal's Ctrl-C reaches it
once, through the parent), finishes its requests in flight on SIGINT/SIGTERM, and prints only
why it stopped (its stderr is the parent's). A worker that dies, or stops on an error, stops
the others gracefully and the run resumably (exit 3). The parent holds the job's directory and
each worker its shard's (:mod:`bulk._runlock`): a second run of the job, or a resumed run while
a worker of a killed one still lives, refuses (exit 2) instead of sending what that process may
be sending too. This module is the parent's side; the
worker's (the task, reading it, running the shard) is :mod:`bulk._procworker`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import orjson

from . import _quotashare, _signals, _summary
from ._procfork import Pool, signal_when_ready, takes_signals
from ._procworker import WorkerTask, die_with_parent, read_task, read_task_fd, run_worker
from ._runlock import hold_dir, is_free
from .config import Shard, UploadConfig
from .errors import AbortRun, BulkError, ConfigError
from .existing import ON_EXISTING_KEY
from .merge import merge_runs
from .outputs import write_atomic
from .progress import ProgressSink, Status
from .refs import OPTION as CREATE_MISSING
from .tally import Tally
from .targets.base import Target

__all__ = ["WorkerTask", "die_with_parent", "job_processes", "read_task", "read_task_fd", "run_processes", "run_worker",
           "shard_dirs"]

_EXITS_OF_A_RUN = {0, 1, 2, 3, 130}  # what a worker's Run can end with (bulk.cli's exit codes)


def shard_dirs(out: Path, n: int) -> list[Path]:
    return [out / "shards" / f"{k}of{n}" for k in range(n)]


def job_processes(config: UploadConfig) -> int:
    """The job's number of processes: what its first run used (``processes.json``), else what
    ``--processes`` asks for. Refuses a different explicit N (the shards are the job)."""
    asked = config.processes_for()
    try:
        known = int(orjson.loads((config.out / "processes.json").read_bytes())["processes"])
    except FileNotFoundError:
        known = 1 if (config.out / "state.db").exists() else 0
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(f"{config.out / 'processes.json'} is damaged: restore it, or use a new --out") from None
    if known and config.processes and known != asked:
        raise ConfigError(f"{config.out} was started with --processes {known}: resume it with --processes {known} "
                          "(or auto), or use a new --out")
    n = known or asked
    if n > 1 and config.input == "-":
        raise ConfigError("--processes N reads the input once per shard: give a file, not stdin (-)")
    if n > 1 and config.shard is not None:
        raise ConfigError("--processes N runs the shards of a job itself: use it without --shard, or run each "
                          "--shard K/N with one process")
    if n > 1:  # also for a resumed N-process job run without --processes (auto resumes its N)
        one = "--threshold" if config.thresholds else "--arrival-rate" if config.arrival_rate else None
        if one:
            raise ConfigError(f"{one} is judged in one process, and {config.out} is a job of {n} processes: "
                              "use a new --out without --processes")
        from .targets import get_target

        unique = get_target(config.target).unique_creates
        if "items" in str(config.options.get(CREATE_MISSING, "")).split(",") and "items" not in unique:
            # Items are shared by every customer, hence by every shard: two processes could
            # each find an item missing and create it (single flight holds within one process),
            # and this API has no unique key that would refuse the second.
            raise ConfigError(f"--create-missing items on {config.target} needs one process ({config.out} is a job "
                              f"of {n} processes): use a new --out without --processes")
    return n


async def run_processes(config: UploadConfig, target: Target, n: int, *, progress: ProgressSink | None = None,
                        pool: Pool | None = None) -> tuple[int, dict[str, Any], BulkError | None]:
    """Run the job in ``config.out`` as ``n`` shard workers; merge; return (exit code,
    merged summary, error). ``target`` is the parent's target object (its base URL,
    credentials, options and limits are handed to the workers); ``progress`` gets a note and
    the shards' counts summed from their checkpointed summaries. The workers are ``pool``'s when
    it has ``n`` (forked before the event loop, bulk._procfork), else spawned."""
    out = config.out
    lock = await hold_dir(out)  # one run of the job at a time (each worker holds its shard's too)
    try:
        for d in shard_dirs(out, n):  # a killed run's worker that still lives: refuse before any sends
            await is_free(d)
        return await _run_processes(config, target, n, progress, pool)
    finally:
        if lock is not None:
            lock.close()


async def _run_processes(config: UploadConfig, target: Target, n: int, progress: ProgressSink | None,
                         pool: Pool | None) -> tuple[int, dict[str, Any], BulkError | None]:
    out = config.out
    try:
        write_atomic(out / "processes.json", orjson.dumps({"processes": n}) + b"\n")
    except OSError as exc:
        raise ConfigError(f"cannot create the run directory {out}: {exc.strerror or exc}") from None
    dirs = shard_dirs(out, n)
    quota = out / "quota.bin"
    try:
        _quotashare.reset(quota, n)  # a killed run's counts are gone with its processes
    except OSError as exc:
        raise ConfigError(f"cannot write {quota}: {exc.strerror or exc}") from None
    tasks = [WorkerTask(
        config=dataclasses.replace(config, out=d, shard=Shard(k, n), processes=1,
                                   concurrency=max(1, round(config.concurrency / n))),
        target=config.target, base_url=target.base_url, credentials=target.credentials,
        options={**target.options, ON_EXISTING_KEY: target.on_existing},  # Target took it out of options
        default_limits=target.default_limits, parent_pid=os.getpid(), quota_share=str(quota),
    ) for k, d in enumerate(dirs)]
    if progress is not None:
        progress.note(f"{n} upload processes, one per shard of the job (in {out / 'shards'}), merged into {out}")
    t0 = time.monotonic()
    codes: list[int | None] = [None] * n
    first_bad: list[int] = []
    stopping = False
    # The worker blocks SIGINT/SIGTERM on its first line, before its (slow) imports: a signal the
    # parent forwards while a worker still starts stays pending, and is delivered when the run's
    # own handling is in place (bulk.pipeline unblocks it then), instead of killing the worker.
    cmd = [sys.executable, "-c", "import signal, sys; signal.pthread_sigmask(signal.SIG_BLOCK, "
           "(signal.SIGINT, signal.SIGTERM)); from bulk.cli import worker_main; sys.exit(worker_main())"]
    if (hub := _signals.current()) is not None:
        hub.to_run()  # from here a signal is the workers' (queued until _watch_signals forwards it)
    async with anyio.create_task_group() as tg:
        forked = pool.take(n) if pool is not None else None
        procs: list[Any] = forked or [await anyio.open_process(cmd, stdin=subprocess.PIPE, stdout=None, stderr=None,
                                                               start_new_session=True) for _ in tasks]

        def signal_all(sig: signal.Signals) -> None:
            for p in procs:
                if p.returncode is None:
                    if not takes_signals(p.pid):
                        tg.start_soon(signal_when_ready, p, sig)  # still starting: its default action would kill it
                        continue
                    with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
                        p.send_signal(sig)

        def on_signal(sig: signal.Signals) -> None:
            nonlocal stopping
            stopping = True
            signal_all(sig)  # a second one stops them at once, as it stops one process

        async def supervise(k: int, proc: Any, task: WorkerTask) -> None:
            if forked:
                await proc.hand(task.to_bytes())
            else:
                assert proc.stdin is not None
                try:
                    await proc.stdin.send(task.to_bytes())
                    await proc.stdin.aclose()
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                    pass  # it died at once: its exit code says so
            codes[k] = code = await proc.wait()
            if code not in (0, 1, 130) and not first_bad:
                first_bad.append(k)
                signal_all(signal.SIGTERM)  # the others finish what is in flight, then stop

        tg.start_soon(_watch_signals, on_signal)
        if progress is not None:
            tg.start_soon(_tick, progress, dirs)
        async with anyio.create_task_group() as workers:
            for k, (proc, task) in enumerate(zip(procs, tasks, strict=True)):
                workers.start_soon(supervise, k, proc, task)
        tg.cancel_scope.cancel()

    elapsed = time.monotonic() - t0
    this_run = _summary.this_run(sum(_this_run_created(d) for d in dirs), elapsed)
    try:
        summary = merge_runs(dirs, out, partial=True, processes=n, this_run=this_run)
    except ConfigError:
        if any(_has_state(d) for d in dirs):
            raise
        summary = {}  # no worker got as far as a checkpoint (e.g. refused its configuration)
    return _outcome(codes, first_bad, stopping, summary)


async def _watch_signals(on_signal: Callable[[signal.Signals], None]) -> None:
    """Until cancelled: each SIGINT/SIGTERM to ``on_signal``, from the command's hub
    (:func:`bulk._signals.taken`) when there is one. A receiver of its own would replace the
    hub's loop handlers, and its end restore Python's defaults, not the hub's: a signal during
    the merge and report would then raise KeyboardInterrupt, or kill the parent (SIGTERM)."""
    hub = _signals.current()
    if hub is not None:
        with hub.attached() as received:
            async for sig in received:
                on_signal(sig)
        return
    try:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for sig in signals:
                on_signal(sig)
    except (ValueError, NotImplementedError):
        await anyio.sleep_forever()  # not the main thread: the caller handles signals


async def _tick(progress: ProgressSink, dirs: list[Path]) -> None:
    """The shards' counts, summed, for the bar (counts and rate only: the shards' watermarks
    are not one position in the input)."""
    while True:
        tally, traffic = Tally(), {"requests": 0, "retries": 0, "throttled": 0}
        for d in dirs:
            try:
                s = orjson.loads((d / "summary.json").read_bytes())
            except (OSError, ValueError):
                continue  # not started yet, or being replaced: next tick
            r = s.get("records", {})
            for key in ("read", "created", "existing", "updated", "unchanged", "rejected", "failed", "uncertain"):
                setattr(tally, key, getattr(tally, key) + int(r.get(key, 0)))
            for key in traffic:
                traffic[key] += int(s.get(key, 0))
        progress.update(tally, traffic, Status(done_bytes=0, done_lines=0, total_bytes=None))
        await anyio.sleep(0.5)


def _has_state(run_dir: Path) -> bool:
    return (run_dir / "state.db").is_file()


def _this_run_created(run_dir: Path) -> int:
    try:
        return int(orjson.loads((run_dir / "summary.json").read_bytes())["this_run"]["created"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def _outcome(codes: list[int | None], first_bad: list[int], stopping: bool,
             summary: dict[str, Any]) -> tuple[int, dict[str, Any], BulkError | None]:
    n = len(codes)
    if first_bad:
        k = first_bad[0]
        code = codes[k]
        assert code is not None
        if code not in _EXITS_OF_A_RUN:
            how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
            return 3, summary, AbortRun(f"upload process {k + 1} of {n} ended unexpectedly ({how}): nothing is "
                                        "lost; run the same command again to resume")
        if code == 2:
            return 2, summary, ConfigError(f"upload process {k + 1} of {n} refused the configuration (its message "
                                           "is above)")
        return 3, summary, AbortRun(f"upload process {k + 1} of {n} stopped (its message is above): run the same "
                                    "command again to resume")
    if stopping or 130 in codes:
        return 130, summary, None
    records = summary.get("records", {})
    bad = records.get("rejected", 0) or records.get("failed", 0) or records.get("uncertain", 0)
    return (1 if bad else 0), summary, None
