"""Command line: argparse -> config -> run. The CLI (this module and :mod:`bulk._cli`) is the
only code that prints.

Exit codes: 0 everything created; 1 finished, but some records were rejected or failed;
2 usage or configuration error; 3 aborted but resumable; 4 finished, but a --threshold was not
met; 130 interrupted, resumable.

This module holds the entry points, :func:`main` (the ``bulk`` console script) and one shard
worker of ``--processes N`` (:func:`forked_worker`, forked by ``main`` before its event loop;
:func:`worker_main`, a spawned one), and maps the exception tree to exit codes. The rest of
the command line lives in :mod:`bulk._cli`, one concept a module: ``parser`` (every command's
arguments and help), ``settings`` (arguments to settings and their usage checks), ``console``
(the exit codes and what is said on stderr), and one module per command group for the
handlers: ``upload``, ``sandbox``, ``offline`` (validate, generate, merge, report).
"""

from __future__ import annotations

import functools
import gc
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import anyio

from ._cli.console import (
    EXIT_ABORTED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PARTIAL,
    EXIT_THRESHOLD,
    EXIT_USAGE,
    say,
    stopped,
)
from ._cli.offline import generate, merge, report_html, validate
from ._cli.parser import EXIT_CODES, build_parser
from ._cli.sandbox import sandbox
from ._cli.upload import planned_processes, upload
from .config import loop_options
from .errors import BulkError, ConfigError
from .targets import get_target

if TYPE_CHECKING:
    from ._procworker import WorkerTask

EXIT_SOFTWARE = 70  # a worker's internal error (sysexits EX_SOFTWARE): its parent stops the run resumably

# main and worker_main are the entry points; the exit codes, their --help text and the parser are
# re-exported (tests and tools read them through bulk.cli).
__all__ = ["EXIT_ABORTED", "EXIT_CODES", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_PARTIAL", "EXIT_THRESHOLD",
           "EXIT_USAGE", "build_parser", "main", "worker_main"]


def main(argv: Sequence[str] | None = None) -> int:
    """The ``bulk`` command: its exit code. ConfigError is a usage error (2), any other BulkError
    a resumable stop (3), Ctrl-C an interruption (130)."""
    args = build_parser().parse_args(argv)
    pool = None
    try:
        if args.command == "generate":
            return generate(args)
        if args.command == "merge":
            return merge(args)
        if args.command == "report":
            return report_html(args)
        runner = {"upload": upload, "validate": validate, "sandbox": sandbox}[args.command]
        if args.command == "upload" and (n := planned_processes(args)) > 1:
            # Forked now, one thread and no event loop yet: started in a millisecond, not a new
            # interpreter's imports (bulk._procfork); bulk.procs hands them their shards.
            from ._procfork import fork_workers

            pool = fork_workers(n, forked_worker)
            runner = functools.partial(upload, pool=pool)
        return anyio.run(runner, args, backend_options=loop_options())
    except ConfigError as exc:
        say(f"error: {exc}")
        return EXIT_USAGE
    except BulkError as exc:
        say(f"stopped: {exc}")
        return EXIT_ABORTED
    except KeyboardInterrupt:
        say("interrupted")
        return EXIT_INTERRUPTED
    finally:
        if pool is not None:
            pool.close()


def worker_main() -> int:
    """Entry point of one shard worker of ``--processes N`` spawned by bulk.procs: it reads its
    task from stdin, runs its shard, and prints only why it stopped (if it did)."""
    from .procs import die_with_parent, read_task

    die_with_parent()
    return run_task(read_task())


def forked_worker(fd: int) -> int:
    """One shard worker of ``--processes N`` forked before the event loop (bulk._procfork): as
    :func:`worker_main`, its task from its pipe ``fd``; 0 at once for none (an unused worker)."""
    from .procs import die_with_parent, read_task_fd

    die_with_parent()
    devnull = os.open(os.devnull, os.O_RDONLY)  # stdin is the parent's; a spawned worker's is its task pipe
    os.dup2(devnull, 0)
    os.close(devnull)
    task = read_task_fd(fd)
    return 0 if task is None else run_task(task)


def run_task(task: WorkerTask) -> int:
    """A shard worker's run of ``task``: its exit code; it prints only why it stopped."""
    from .procs import run_worker

    gc.freeze()
    gc.set_threshold(20_000, 50, 100)
    try:
        result = anyio.run(run_worker, task, backend_options=loop_options())
    except BulkError as exc:
        from .errors import redact_error
        from .transport import redactor

        redact_error(exc, redactor(task.credentials.values()))  # at the output boundary, as the engine's own
        say(f"{'error' if isinstance(exc, ConfigError) else 'stopped'}: {exc}")
        if isinstance(exc, ConfigError):
            return EXIT_USAGE
        return EXIT_ABORTED
    except Exception:  # a bug: not "finished" (1, which the parent would merge as a done shard)
        import traceback

        from .transport import redactor

        say(redactor(task.credentials.values())(traceback.format_exc()).rstrip())
        return EXIT_SOFTWARE
    if result.error is not None:
        cls = get_target(task.target)
        stopped(cls, task.config, result.error, result.exit_code)
    return int(result.exit_code)

