"""``bulk upload``: from its arguments to a run, and what is said before and after it.

The arguments become an :class:`~bulk.config.UploadConfig` (usage errors exit 2 before anything
starts); then a dry run plans without sending, or the run goes to the given base URL or, without
one, to the target's sandbox dialect embedded in this process (its data in the run directory, so
a resumed run meets the API the killed one left). The run itself is :mod:`bulk.pipeline`'s (one
process) or :mod:`bulk.procs`' (``--processes N``); both are imported only when a run starts.
"""

from __future__ import annotations

import argparse
import gc
import os
import secrets
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..config import UploadConfig
from ..errors import ConfigError, OutputError
from ..existing import ON_EXISTING_KEY
from ..refs import check_kinds, parse_kinds
from ..source import estimate_records
from ..targets import get_target
from ..targets.base import Target
from .console import EXIT_INTERRUPTED, EXIT_OK, EXIT_PARTIAL, EXIT_THRESHOLD, report, say, stopped
from .settings import check_options, check_paths, parse_options, upload_config

if TYPE_CHECKING:
    from .._procfork import Pool
    from .._signals import Hub
    from ..pipeline import RunResult  # imported when a run starts (see run)

__all__ = ["planned_processes", "run", "upload"]


def _config(args: argparse.Namespace, cls: type[Target]) -> UploadConfig:
    """The run's settings (a usage error raises ConfigError)."""
    base_url = args.base_url or os.environ.get(cls.base_url_env) or None
    config = upload_config(args, base_url)
    if args.metrics_port is not None and not config.processes and not (config.out / "processes.json").exists():
        # auto, for a new job: --metrics-port serves one process's figures (a resumed N-process
        # job keeps its N, and is refused in _upload)
        config = replace(config, processes=1)
    return config


def planned_processes(args: argparse.Namespace) -> int:
    """How many upload processes ``bulk upload`` with ``args`` will run, decided before its event
    loop starts (bulk.cli forks them then, bulk._procfork): the job's N, as :func:`run` takes it.
    0 for a dry run or a usage error, which the command itself then reports."""
    from ..errors import BulkError
    from ..procs import job_processes

    try:
        config = _config(args, get_target(args.target))
        return 0 if config.dry_run else job_processes(config)
    except (BulkError, OSError, ValueError):
        return 0


async def upload(args: argparse.Namespace, pool: Pool | None = None) -> int:
    """``bulk upload``: its exit code (:mod:`bulk._cli.console`); a usage error raises ConfigError first.
    SIGINT/SIGTERM are the event loop's from here to the end (:func:`bulk._signals.taken`): one
    before the run stops the command at once (130), one from the run's start on is the run's."""
    from .._signals import taken

    code: int | None = None
    async with taken() as hub:
        code = await _upload(args, hub, pool)
    if code is None:  # a signal before the run started (or during a dry run, which has none)
        say("interrupted: the dry run stopped; nothing was sent" if getattr(args, "dry_run", False)
            else "interrupted: run the same command again to resume")
        return EXIT_INTERRUPTED
    return code


async def _upload(args: argparse.Namespace, hub: Hub, pool: Pool | None) -> int:
    from ..progress import make_progress

    # A run allocates a few objects per record and reference counting frees nearly all of them
    # at once; with the default gen-0 threshold (700) the cyclic collector rescanned the young
    # survivors (records in flight, connections) ~100 times a second for nothing: ~4 % of the
    # CPU. Fewer, larger young collections, and the startup objects frozen out of them.
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)

    cls = get_target(args.target)
    config = _config(args, cls)
    check_options(cls, parse_options(args.option))
    create = None if args.create_missing is None else parse_kinds(args.create_missing)
    if create is not None:
        check_kinds(cls, create)
    check_paths(config)
    if config.dry_run:
        return await _dry_run(config, cls)
    from ..procs import job_processes

    processes = job_processes(config)  # usage errors of N processes, a resumed job's N included
    target: Target | None = None
    if config.base_url is not None:  # a missing credential is said before any bar is drawn
        target = cls(base_url=config.base_url, credentials=cls.credentials_from_env(os.environ),
                     options={**config.options, ON_EXISTING_KEY: config.on_existing})
    metrics = None
    if args.metrics_port is not None and processes > 1:
        raise ConfigError(f"--metrics-port serves one process's figures, and {config.out} is a job of {processes} "
                          "processes: use a new --out without --processes")
    if args.metrics_port is not None:  # a port in use is a usage error, said before anything starts
        from ..prom import MetricsServer

        metrics = MetricsServer(args.metrics_host, args.metrics_port)
    console = make_progress(quiet=args.quiet, desc=f"bulk {config.target}")
    try:
        if metrics is not None:
            console.note(f"metrics at {metrics.url}")
        if target is not None:
            if (pace := _pace_note(config, target)) is not None:
                console.note(pace)
            result = await run(config, target, console, metrics, hub, pool)
        else:
            from ..embedded import pairing, seeded_options
            from ..sandbox import serve  # aiohttp.web and the dialects: imported only when used
            from ..sandbox.config import SandboxConfig

            pair = pairing(cls)  # how this client meets its sandbox dialect
            creds, token = pair.credentials(secrets.token_urlsafe(24))
            # The sandbox keeps its data in the run directory: a resumed run meets the API the
            # killed one left, as it would a real one.
            try:
                config.out.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise OutputError(f"cannot create the run directory {config.out}: {exc.strerror or exc}") from None
            state = config.out / "sandbox.db"
            seed = await seeded_options(cls, config, create)  # the input read in a worker thread
            sandbox_config = SandboxConfig(token=token, options=seed, state=str(state))
            async with serve(config.target, sandbox_config) as sandbox:
                console.note(f"no --base-url: using the embedded {config.target} sandbox at {sandbox.base_url} "
                             f"(nothing leaves this machine; its data in {state})")
                options = {**pair.client_options(), **config.options, ON_EXISTING_KEY: config.on_existing}
                target = cls(base_url=sandbox.base_url, credentials=creds, options=options)
                target.default_limits = {}  # the sandbox has no limit unless --rate sets one
                result = await run(config, target, console, metrics, hub, pool)
        if result.summary:
            console.finish(result.summary)
    finally:
        console.close()
        if metrics is not None:
            metrics.close()
    if result.summary:  # none when no upload process got as far as a checkpoint
        report(config, result.summary)
    if result.error is not None:
        stopped(cls, config, result.error, result.exit_code)
    elif result.interrupted:
        say("interrupted: run the same command again to resume")
    missed = [t for t in result.summary.get("thresholds") or () if not t["met"]]
    if missed and result.exit_code in (EXIT_OK, EXIT_PARTIAL):
        return EXIT_THRESHOLD  # a finished run that missed a threshold: 4 wins over 1 (see EXIT_CODES)
    return result.exit_code


async def run(config: UploadConfig, target: Target, console: Any, metrics: Any = None,
              hub: Hub | None = None, pool: Pool | None = None) -> RunResult:
    """The job in one process, or in N shard workers (``--processes N``, bulk.procs: the ``pool``
    forked before the event loop when it has N, else spawned). With the command's ``hub``, a
    signal once the run directory is locked is the run's (its graceful stop); with N processes
    bulk.procs takes the hub's signals from ``hub.to_run()``, before it hands the workers their
    shards, so until then one stops the command."""
    from .._runlock import hold_dir
    from ..pipeline import Run, RunResult
    from ..procs import job_processes, run_processes

    n = job_processes(config)
    if n == 1:
        lock = await hold_dir(config.out)  # one process uploads into a run directory at a time
        try:
            if hub is not None:
                hub.to_run()
            return await Run(config, target, progress=console, metrics=metrics).execute()
        finally:
            if lock is not None:
                lock.close()
    code, summary, error = await run_processes(config, target, n, progress=console, pool=pool)
    return RunResult(code, summary, error, interrupted=code == EXIT_INTERRUPTED)


async def _dry_run(config: UploadConfig, cls: type[Target]) -> int:
    """``--dry-run``: what the run would do, on stdout; nothing is sent."""
    from ..plan import make_plan

    target = cls(base_url="", credentials={}, options=config.options)
    plan = await make_plan(config.input, target=target, max_line_bytes=config.max_line_bytes, run_dir=config.out)
    for line in plan.lines():
        print(line)
    say(f"dry run: {plan.records} records, {plan.valid} valid, {plan.problem_count} rejected; would skip "
        f"{plan.done} already done, reconcile {plan.reconcile} possibly sent by an interrupted run, "
        f"create {plan.create}; nothing was sent")
    return EXIT_PARTIAL if plan.problem_count else EXIT_OK


def _duration(seconds: float) -> str:
    """A rough duration for people: "5 min", "2 h 10 min", "3 d 4 h"."""
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{max(minutes, 1)} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    return f"{hours // 24} d {hours % 24} h"


def _pace_note(config: UploadConfig, target: Target) -> str | None:
    """One line at the start of a real run whose pace makes it long: the write rate and the
    estimated duration (the input's invoices, each costing ``writes_per_invoice`` writes)."""
    kind, rate = config.invoice_pace(target.default_limits)
    if not rate:
        return None
    what = "writes" if kind == "write" else "requests"
    pace = f"{rate * 60:g} {what}/min" if rate < 2 else f"{rate:g} {what}/s"
    raise_it = "--limit write=R" if kind == "write" else "--rate R"
    count = estimate_records(config.input)
    per = target.writes_per_invoice()
    if count is None:
        return (f"{pace}: about {_duration(1000 * per / rate)} per 1,000 invoices; {raise_it} for a plan "
                "with higher limits")
    seconds = count * per / rate
    if seconds < 60:
        return None
    return (f"{pace}: about {_duration(seconds)} for {count:,} invoices; {raise_it} for a plan with "
            "higher limits")

