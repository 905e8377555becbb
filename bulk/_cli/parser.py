"""The command line's grammar: every command's arguments, help texts and epilogs (argparse).

:func:`build_parser` builds the ``bulk`` parser, one function per command group. A usage error
exits 2 (:data:`~bulk._cli.console.EXIT_USAGE`) before anything starts. The epilogs list every
registered target's environment variables and ``--option`` keys, so they are built only when
help is shown (loading every target is not for a normal start).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import NoReturn

from ..errors import ConfigError
from ..existing import DEFAULT, POLICIES
from ..targets import Names, available_targets, get_target
from .console import EXIT_USAGE, say

__all__ = ["EXIT_CODES", "build_parser"]


class _Parser(argparse.ArgumentParser):
    #: builds the epilog when help is shown (it loads every target: never on a normal start)
    epilog_fn: Callable[[], str] | None = None

    def format_help(self) -> str:
        if self.epilog_fn is not None:
            self.epilog = self.epilog_fn()
        return super().format_help()

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        say(f"error: {message}")
        raise SystemExit(EXIT_USAGE)


def _processes(text: str) -> int:
    if text == "auto":
        return 0
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of processes (1, 2, ...) or auto")
    return value


EXIT_CODES = """exit codes:
  0    every record created
  1    finished, but some records were rejected or failed (see failed_reasons.csv)
  2    usage or configuration error: nothing was started
  3    stopped, resumable: run the same command again (credentials refused, API down,
       quota exhausted, disk full)
  4    finished, but at least one --threshold was not met (see summary.json "thresholds");
       it wins over 1; 2, 3 and 130 win over it (thresholds judge only a finished run)
  130  interrupted, resumable: run the same command again"""


def _targets_epilog() -> str:
    """Each target's environment variables and --option keys (for --help)."""
    lines = ["environment (credentials only ever come from the environment; --base-url wins over",
             "the *_BASE_URL variable; without either, bulk upload uses the embedded sandbox):"]
    for name in available_targets():
        try:
            cls = get_target(name)
        except ConfigError:
            continue
        env = ", ".join([*cls.credential_env, *(f"{v} (optional)" for v in cls.optional_env)])
        without = f" (without {cls.path_prefix})" if cls.path_prefix else ""
        lines.append(f"  {name:<11} {env}; base URL: {cls.base_url_env}{without}")
        lines.append(f"  {'':<11} --option keys: {', '.join(cls.option_keys) or 'none'}")
    return "\n".join(lines)


def _upload_epilog() -> str:
    return f"{_targets_epilog()}\n\n{EXIT_CODES}"


def _sandbox_epilog() -> str:
    lines = ["credentials: when the target's credential variables are all set, the sandbox accepts only",
             "that token, so a client run with the same environment authenticates (and a wrong one",
             "gets 401); when they are not set it accepts any token. --target all accepts any token.",
             "The variables:"]
    for name in available_targets():
        try:
            cls = get_target(name)
        except ConfigError:
            continue
        lines.append(f"  {name:<11} {' and '.join(cls.credential_env)}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    p = _Parser(prog="bulk", description="Fast, exact, resumable bulk invoice uploads.", formatter_class=raw)
    p.epilog_fn = _upload_epilog
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    targets = Names()  # the entry points are read only for a name that is not built in, or a listing
    _upload_arguments(sub, targets)
    _validate_arguments(sub, targets)
    _sandbox_arguments(sub)
    _run_dir_arguments(sub)
    _generate_arguments(sub)
    return p


def _upload_arguments(sub: argparse._SubParsersAction[_Parser], targets: Names) -> None:
    """``bulk upload``: the run's source, target, pace, outputs and conditions."""
    raw = argparse.RawDescriptionHelpFormatter
    up = sub.add_parser("upload", help="upload an NDJSON file of invoices (resumable)", formatter_class=raw)
    up.epilog_fn = _upload_epilog
    up.add_argument("input", help="NDJSON file, .gz file, or - for stdin")
    up.add_argument("--target", default="agiled", choices=targets, metavar="TARGET",
                    help="the API to upload to: %(choices)s (default: agiled)")
    up.add_argument("--base-url", help="the API's base URL (default: the target's *_BASE_URL env var, "
                    "else the embedded sandbox)")
    up.add_argument("--rate", type=float,
                    help="requests per second for the whole run (default: the API's documented limits)")
    up.add_argument("--limit", action="append", default=[], metavar="KIND=RATE",
                    help="requests per second for one kind of request (read, write), in place of the target's "
                    "documented limit, e.g. --limit write=2 for a plan with higher limits; with --shard K/N "
                    "every rate is split N ways (default: the documented limits)")
    up.add_argument("--on-existing", choices=POLICIES, default=DEFAULT,
                    help="an invoice the API already holds under the record's external id: skip leaves it (ID map "
                    "action 'existing'), fail reports it in failed_reasons.csv, update changes it to match the "
                    f"record where the API allows it ('updated', or 'unchanged' when it matches) (default: {DEFAULT})")
    up.add_argument("--concurrency", type=int, default=64, help="records in flight (default 64)")
    up.add_argument("--item-concurrency", type=int, default=4, help="line items of one invoice created at once "
                    "where the API needs one call per item (anny); 1 keeps the source order (default 4)")
    up.add_argument("--out", help="run directory (default runs/<input name>); re-run with the same --out to resume")
    up.add_argument("--dry-run", action="store_true", help="validate and say what would be done; send nothing")
    up.add_argument("--quiet", action="store_true", help="no progress bar (notes and the summary are still printed)")
    up.add_argument("--timeout", type=float, default=30.0, help="seconds per request (default 30)")
    up.add_argument("--retries", type=int, default=5, help="retries per request for 5xx/timeouts (default 5)")
    up.add_argument("--give-up-after", type=float, default=120.0,
                    help="stop (resumably) when nothing has succeeded for this many seconds (default 120)")
    up.add_argument("--max-wait", type=float, default=900.0,
                    help="stop (resumably) when the API asks to wait longer than this (default 900 s)")
    up.add_argument("--checkpoint-every", type=float, default=1.0, help=argparse.SUPPRESS)
    up.add_argument("--max-line-bytes", type=int, default=1 << 20, help="longest accepted input line (default 1 MiB)")
    up.add_argument("--allow-insecure-http", action="store_true", help="allow plain http to a non-loopback host")
    up.add_argument("--processes", type=_processes, default=0, metavar="N|auto",
                    help="upload processes: N shard workers of the job, merged into --out (default auto: 2 "
                    "for a plain-file input of 4 MiB or more on 2+ cores where measured to pay, else 1; 1 "
                    "also where the invoices' rate limit is at most 1,000/s, as every real API's documented "
                    "one is: one process keeps that pace; see the README)")
    up.add_argument("--shard", help="K/N: only the records whose customer hashes to shard K of N (default: all "
                    "records)")
    up.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                    help="target setting, e.g. organization=42 (anny), record_map=map.csv (coperniq); "
                    "each target's keys are listed below (default: none)")
    up.add_argument("--arrival-rate", type=float, metavar="R",
                    help="open loop: start R records per second whatever the server does (within --concurrency); "
                    "latency counts from each record's due time (default: closed loop)")
    up.add_argument("--threshold", action="append", default=[], metavar="EXPR",
                    help="pass/fail condition, e.g. write.p99<800ms, errors<0.5%%, rate>=50/s (repeatable); "
                    "exit 4 when one is not met (default: none)")
    up.add_argument("--metrics-port", type=int, metavar="P",
                    help="serve Prometheus /metrics on this port while the run lasts; 0 picks a free one "
                    "(default: none)")
    up.add_argument("--metrics-host", default="127.0.0.1", help="address of --metrics-port (default 127.0.0.1)")
    up.add_argument("--create-missing", metavar="KINDS",
                    help="create what invoices reference and the API lacks, once each: a comma list of "
                    "customers, items (chargeover: items; coperniq: customers as accounts, items as catalog "
                    "items); listed in created_refs.csv (default: customers are created on agiled, anny "
                    "and chargeover, nothing else)")


def _validate_arguments(sub: argparse._SubParsersAction[_Parser], targets: Names) -> None:
    """``bulk validate``: an offline check of an input file."""
    va = sub.add_parser("validate", help="check an input file offline; nothing is sent")
    va.add_argument("input", help="NDJSON file or .gz file")
    va.add_argument("--target", choices=targets, metavar="TARGET",
                    help="also apply this target's own rules, one of %(choices)s (default: only the common input "
                         "rules)")
    va.add_argument("--max-line-bytes", type=int, default=1 << 20, help="longest accepted input line (default 1 MiB)")
    va.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                    help="target setting, as for bulk upload (default: none)")


def _sandbox_arguments(sub: argparse._SubParsersAction[_Parser]) -> None:
    """``bulk sandbox``: an API simulator, its faults and its seed."""
    raw = argparse.RawDescriptionHelpFormatter
    sb = sub.add_parser("sandbox", help="run an API simulator on loopback", formatter_class=raw)
    sb.epilog_fn = _sandbox_epilog
    sb.add_argument("--target", default="agiled", choices=Names("all"), metavar="TARGET",
                    help="the API to simulate: %(choices)s; all serves every dialect under /<target> (default: "
                         "agiled)")
    sb.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    sb.add_argument("--port", type=int, default=8080, help="port to listen on; 0 picks a free one (default 8080)")
    sb.add_argument("--rate-limit", type=float, help="writes per second per token, 429 beyond (default: no limit)")
    sb.add_argument("--read-rate-limit", type=float,
                    help="reads per second per token, 429 beyond (default: no limit)")
    sb.add_argument("--burst", type=float,
                    help="requests a rate-limit bucket holds (default: one second's worth)")
    sb.add_argument("--latency", type=float, default=0, help="milliseconds added to every request (default 0)")
    sb.add_argument("--fail-rate", type=float, default=0, help="probability of a 500 (default 0)")
    sb.add_argument("--drop-rate", type=float, default=0,
                    help="probability of dropping the connection unhandled (default 0)")
    sb.add_argument("--lose-rate", type=float, default=0,
                    help="probability of losing the answer after a create (default 0)")
    sb.add_argument("--seed", type=int, help="seed of the fault injection (default: random)")
    sb.add_argument("--state", metavar="FILE",
                    help="keep the stored data in this SQLite file across restarts (default: in memory)")
    sb.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                    help="dialect setting (see bulk/sandbox/config.py; default: none)")
    sb.add_argument("--seed-from", metavar="INPUT",
                    help="start holding the customers' records, catalog items and currencies this NDJSON "
                    "(or .gz) file references, so it rehearses end to end (default: the built-in seed only)")


def _run_dir_arguments(sub: argparse._SubParsersAction[_Parser]) -> None:
    """``bulk merge`` and ``bulk report``: commands on run directories."""
    me = sub.add_parser("merge", help="combine the run directories of --shard K/N runs into one")
    me.add_argument("runs", nargs="+", metavar="RUN_DIR", help="the --out directory of every shard")
    me.add_argument("--out", required=True, help="a new directory for the merged outputs")

    rp = sub.add_parser("report", help="write RUN_DIR/report.html: one self-contained page about a run")
    rp.add_argument("run_dir", metavar="RUN_DIR", help="the --out directory of a bulk upload (or bulk merge)")


def _generate_arguments(sub: argparse._SubParsersAction[_Parser]) -> None:
    """``bulk generate``: synthetic input."""
    ge = sub.add_parser("generate", help="write N synthetic valid invoices as NDJSON")
    ge.add_argument("n", type=int, help="how many invoices")
    ge.add_argument("--seed", type=int, default=0, help="random seed: the same seed writes the same file (default 0)")
    ge.add_argument("--output", "-o", default="-", help="file (default stdout)")
