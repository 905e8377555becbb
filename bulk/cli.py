"""Command line: argparse -> config -> run. The only module that prints.

Exit codes: 0 everything created; 1 finished, but some records were rejected or failed;
2 usage or configuration error; 3 aborted but resumable; 4 finished, but a --threshold was not
met; 130 interrupted, resumable.
"""

from __future__ import annotations

import argparse
import gc
import os
import secrets
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import urlsplit

import anyio

from .config import Shard, UploadConfig, loop_options
from .errors import AuthError, BulkError, ConfigError, OutputError
from .existing import DEFAULT, ON_EXISTING_KEY, POLICIES
from .refs import OPTION as CREATE_MISSING
from .refs import check_kinds, parse_kinds
from .source import directory_message, estimate_records
from .targets import available_targets, get_target
from .targets.base import Target
from .thresholds import parse_threshold

if TYPE_CHECKING:
    from .pipeline import RunResult  # imported when a run starts (see _run)

__all__ = ["main"]

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, EXIT_ABORTED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_THRESHOLD = 4


def _say(message: str) -> None:
    print(f"bulk: {message}", file=sys.stderr, flush=True)


class _Parser(argparse.ArgumentParser):
    #: builds the epilog when help is shown (it loads every target: never on a normal start)
    epilog_fn: Callable[[], str] | None = None

    def format_help(self) -> str:
        if self.epilog_fn is not None:
            self.epilog = self.epilog_fn()
        return super().format_help()

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        _say(f"error: {message}")
        raise SystemExit(EXIT_USAGE)


def _options(pairs: Sequence[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--option {pair!r}: write it as KEY=VALUE")
        out[key] = value
    return out


def _limits(pairs: Sequence[str]) -> dict[str, float]:
    out = {}
    for pair in pairs:
        kind, sep, value = pair.partition("=")
        try:
            out[kind] = float(value) if sep and kind else float("nan")
        except ValueError:
            out[kind] = float("nan")
        if out[kind] != out[kind]:
            raise ConfigError(f"--limit {pair!r}: write it as KIND=RATE, e.g. write=2 (requests per second)")
    return out


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
    targets = available_targets()

    up = sub.add_parser("upload", help="upload an NDJSON file of invoices (resumable)", formatter_class=raw)
    up.epilog_fn = _upload_epilog
    up.add_argument("input", help="NDJSON file, .gz file, or - for stdin")
    up.add_argument("--target", default="agiled", choices=targets, help="the API to upload to (default: agiled)")
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
                    help="upload processes: N shard workers of the job, merged into --out (default auto: 1, "
                    "as measured on 2 vCPUs; see the README)")
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

    va = sub.add_parser("validate", help="check an input file offline; nothing is sent")
    va.add_argument("input", help="NDJSON file or .gz file")
    va.add_argument("--target", choices=targets,
                    help="also apply this target's own rules (default: only the common input rules)")
    va.add_argument("--max-line-bytes", type=int, default=1 << 20, help="longest accepted input line (default 1 MiB)")
    va.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                    help="target setting, as for bulk upload (default: none)")

    sb = sub.add_parser("sandbox", help="run an API simulator on loopback", formatter_class=raw)
    sb.epilog_fn = _sandbox_epilog
    sb.add_argument("--target", default="agiled", choices=[*targets, "all"],
                    help="the API to simulate; all serves every dialect under /<target> (default: agiled)")
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

    me = sub.add_parser("merge", help="combine the run directories of --shard K/N runs into one")
    me.add_argument("runs", nargs="+", metavar="RUN_DIR", help="the --out directory of every shard")
    me.add_argument("--out", required=True, help="a new directory for the merged outputs")

    rp = sub.add_parser("report", help="write RUN_DIR/report.html: one self-contained page about a run")
    rp.add_argument("run_dir", metavar="RUN_DIR", help="the --out directory of a bulk upload (or bulk merge)")

    ge = sub.add_parser("generate", help="write N synthetic valid invoices as NDJSON")
    ge.add_argument("n", type=int, help="how many invoices")
    ge.add_argument("--seed", type=int, default=0, help="random seed: the same seed writes the same file (default 0)")
    ge.add_argument("--output", "-o", default="-", help="file (default stdout)")
    return p


# --- upload ----------------------------------------------------------------------------------
def _default_out(input_path: str, shard: Shard | None) -> Path:
    if input_path == "-":
        raise ConfigError("reading stdin needs --out: the run directory is how a re-run resumes")
    name = Path(input_path).name
    for suffix in (".gz", ".ndjson", ".jsonl", ".json"):
        name = name.removesuffix(suffix)
    return Path("runs") / (name + (f"-shard{shard.index}of{shard.count}" if shard else ""))


def _upload_config(args: argparse.Namespace, base_url: str | None) -> UploadConfig:
    shard = Shard.parse(args.shard) if args.shard else None
    return UploadConfig(
        input=args.input,
        out=Path(args.out) if args.out else _default_out(args.input, shard),
        target=args.target,
        base_url=base_url,
        rate=args.rate,
        limits=_limits(args.limit),
        concurrency=args.concurrency,
        item_concurrency=args.item_concurrency,
        timeout=args.timeout,
        attempts=args.retries + 1,
        give_up_after=args.give_up_after,
        max_wait=args.max_wait,
        checkpoint_every=args.checkpoint_every,
        max_line_bytes=args.max_line_bytes,
        dry_run=args.dry_run,
        allow_insecure_http=args.allow_insecure_http,
        shard=shard,
        processes=args.processes,
        options={**_options(args.option),
                 **({CREATE_MISSING: args.create_missing} if args.create_missing is not None else {})},
        arrival_rate=args.arrival_rate,
        thresholds=tuple(parse_threshold(t) for t in args.threshold),
        on_existing=args.on_existing,
    )


def _embedded_seed(cls: type[Target], config: UploadConfig, create: frozenset[str] | None,
                   options: dict[str, Any]) -> dict[str, Any]:
    """The embedded sandbox's options: the target's own seed, plus what the input references
    (``--seed-from`` of that input), less the kinds ``--create-missing`` is to create: that
    run rehearses the creating."""
    from .sandbox.seed_from import SEEDED, read_references, seed_options

    # stdin cannot be read twice; a sandbox.db already there is restored as it is (a resumed
    # run meets the API the killed one left), so its seed would be ignored: not read for nothing.
    if config.input == "-" or cls.name not in SEEDED or (config.out / "sandbox.db").exists():
        return options

    try:
        refs = read_references(config.input)
    except OSError as exc:
        raise ConfigError(f"cannot read {config.input}: {exc.strerror or exc}") from None
    return {**options, **seed_options(cls.name, refs, leave_out=create or frozenset())}


def _check_options(cls: type[Target], options: dict[str, str]) -> None:
    """Refuse an --option key the target does not read (it would be ignored silently)."""
    unknown = sorted(set(options) - set(cls.option_keys))
    if unknown:
        keys = ", ".join(cls.option_keys) or "none"
        raise ConfigError(f"--option {', '.join(unknown)}: not an option of the {cls.name} target "
                          f"(its options: {keys})")


def _check_paths(config: UploadConfig) -> None:
    """The input and --out problems that are usage errors: found before anything is created."""
    if config.input != "-":
        if os.path.isdir(config.input):
            raise ConfigError(directory_message(config.input))
        if not os.path.exists(config.input):
            raise ConfigError(f"input {config.input!r} does not exist")
    for path in (config.out, *config.out.parents):
        if path.exists():
            if not path.is_dir():
                raise ConfigError(f"--out {str(config.out)!r}: {str(path)!r} is a file, not a directory: "
                                  "give a new directory (or an earlier run's) for the run")
            break


def _duration(seconds: float) -> str:
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
    limits = config.pacing_limits(target.default_limits)
    kind = "write" if "write" in limits else "*"
    rate = limits.get(kind)
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


async def _upload(args: argparse.Namespace) -> int:
    from .progress import make_progress

    # A run allocates a few objects per record and reference counting frees nearly all of them
    # at once; with the default gen-0 threshold (700) the cyclic collector rescanned the young
    # survivors (records in flight, connections) ~100 times a second for nothing: ~4 % of the
    # CPU. Fewer, larger young collections, and the startup objects frozen out of them.
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)

    cls = get_target(args.target)
    base_url = args.base_url or os.environ.get(cls.base_url_env) or None
    config = _upload_config(args, base_url)
    _check_options(cls, _options(args.option))
    create = None if args.create_missing is None else parse_kinds(args.create_missing)
    if create is not None:
        check_kinds(cls, create)
    _check_paths(config)
    if config.dry_run:
        return await _dry_run(config, cls)
    from .procs import job_processes

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
        from .prom import MetricsServer

        metrics = MetricsServer(args.metrics_host, args.metrics_port)
    console = make_progress(quiet=args.quiet, desc=f"bulk {config.target}")
    try:
        if metrics is not None:
            console.note(f"metrics at {metrics.url}")
        if target is not None:
            if (pace := _pace_note(config, target)) is not None:
                console.note(pace)
            result = await _run(config, target, console, metrics)
        else:
            from .embedded import pairing
            from .sandbox import serve  # aiohttp.web and the dialects: imported only when used
            from .sandbox.config import SandboxConfig

            pair = pairing(cls)  # how this client meets its sandbox dialect
            creds, token = pair.credentials(secrets.token_urlsafe(24))
            # The sandbox keeps its data in the run directory: a resumed run meets the API the
            # killed one left, as it would a real one.
            try:
                config.out.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise OutputError(f"cannot create the run directory {config.out}: {exc.strerror or exc}") from None
            state = config.out / "sandbox.db"
            seed = _embedded_seed(cls, config, create, pair.dialect_options())
            sandbox_config = SandboxConfig(token=token, options=seed, state=str(state))
            async with serve(config.target, sandbox_config) as sandbox:
                console.note(f"no --base-url: using the embedded {config.target} sandbox at {sandbox.base_url} "
                             f"(nothing leaves this machine; its data in {state})")
                options = {**pair.client_options(), **config.options, ON_EXISTING_KEY: config.on_existing}
                target = cls(base_url=sandbox.base_url, credentials=creds, options=options)
                target.default_limits = {}  # the sandbox has no limit unless --rate sets one
                result = await _run(config, target, console, metrics)
        if result.summary:
            console.finish(result.summary)
    finally:
        console.close()
        if metrics is not None:
            metrics.close()
    if result.summary:  # none when no upload process got as far as a checkpoint
        _report(config, result.summary)
    if result.error is not None:
        _stopped(cls, config, result.error, result.exit_code)
    elif result.interrupted:
        _say("interrupted: run the same command again to resume")
    missed = [t for t in result.summary.get("thresholds") or () if not t["met"]]
    if missed and result.exit_code in (EXIT_OK, EXIT_PARTIAL):
        return EXIT_THRESHOLD  # a finished run that missed a threshold: 4 wins over 1 (see EXIT_CODES)
    return result.exit_code


async def _run(config: UploadConfig, target: Target, console: Any, metrics: Any = None) -> RunResult:
    """The job in one process, or in N shard workers (``--processes N``, bulk.procs)."""
    from .pipeline import Run, RunResult
    from .procs import job_processes, run_processes

    n = job_processes(config)
    if n == 1:
        return await Run(config, target, progress=console, metrics=metrics).execute()
    code, summary, error = await run_processes(config, target, n, progress=console)
    return RunResult(code, summary, error, interrupted=code == EXIT_INTERRUPTED)


def worker_main() -> int:
    """Entry point of one shard worker of ``--processes N`` (started by bulk.procs): it reads
    its task from stdin, runs its shard, and prints only why it stopped (if it did)."""
    from .procs import die_with_parent, read_task, run_worker

    die_with_parent()
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)
    task = read_task()
    try:
        result = anyio.run(run_worker, task, backend_options=loop_options())
    except BulkError as exc:
        from .errors import redact_error
        from .transport import redactor

        redact_error(exc, redactor(task.credentials.values()))  # at the output boundary, as the engine's own
        _say(f"{'error' if isinstance(exc, ConfigError) else 'stopped'}: {exc}")
        if isinstance(exc, ConfigError):
            return EXIT_USAGE
        return EXIT_ABORTED
    if result.error is not None:
        cls = get_target(task.target)
        _stopped(cls, task.config, result.error, result.exit_code)
    return int(result.exit_code)


def _stopped(cls: type[Target], config: UploadConfig, error: BulkError, exit_code: int) -> None:
    """Why the run stopped and what to do, each said once (some messages already say it)."""
    message = str(error)
    _say(f"stopped: {message}")
    if (hint := _base_url_hint(cls, config.base_url, error)) is not None:
        _say(hint)
    if "the same command" in message:  # e.g. a quota: "resume after <when> with the same command"
        return  # the message already says what to do
    elif isinstance(error, AuthError):
        _say("nothing is lost: fix the credentials, then run the same command again to resume")
    elif exit_code == EXIT_ABORTED:
        _say("nothing is lost: run the same command again to resume")
    else:  # e.g. the API refused the first (smoke test) request: the same command would fail again
        _say("nothing was created: fix the configuration (--base-url, --option) and run again")


def _base_url_hint(cls: type[Target], base_url: str | None, error: BulkError) -> str | None:
    """After a 404: the base URL most likely repeats the path the target adds itself."""
    if base_url is None or getattr(error, "status", None) != 404:
        return None
    prefix = cls.path_prefix
    path = urlsplit(base_url).path.rstrip("/")
    if prefix and path.endswith(prefix):
        return (f"hint: give the base URL without {prefix}, which bulk adds to every request: "
                f"--base-url {base_url[: len(base_url) - len(prefix)].rstrip('/') or base_url}")
    return f"hint: check --base-url: {cls.name} requests go to {base_url}{prefix}/..."


def _report(config: UploadConfig, s: dict[str, Any]) -> None:
    r = s["records"]
    _say(
        f"{s['target']}: {r['read']} records: {r['created']} created ({r['existing']} already existed, "
        f"{r.get('updated', 0)} updated, {r.get('unchanged', 0)} unchanged, "
        f"{r['already_done']} done by earlier runs), {r['rejected']} rejected, {r['failed']} failed, "
        f"{r['uncertain']} uncertain"
    )
    for cur, t in s["totals"].items():
        _say(f"  {cur}: {t['invoices']} invoices, net {t['net']}, tax {t['tax']}, gross {t['gross']}")
    if s["mismatches"]["count"]:
        _say(f"  {s['mismatches']['count']} invoice totals reported by the API differ from the money rule "
             "(see summary.json)")
    note = (s.get("reconciled") or {}).get("note")
    if note:
        _say(f"  {note}")
    _say(f"  {s['requests']} requests, {s['retries']} retries, {s['throttled']} throttled; "
         f"this run {s['this_run']['elapsed_seconds']:.1f} s, {s['this_run']['invoices_per_second']:.1f} invoices/s")
    from .measure import measured_lines

    for line in measured_lines(s):
        _say(f"  {line}")
    made = {kind: n for kind, n in (s.get("created_refs") or {}).items() if n}
    if made:  # --create-missing, or customers created as always
        listed = ", ".join(f"{n} {kind}{'s' if n != 1 else ''}" for kind, n in made.items())
        _say(f"  created what the invoices referenced: {listed} (created_refs.csv)")
    bad = r["rejected"] + r["failed"] + r["uncertain"]
    extra = f"; fix and re-feed {config.out / 'failed.ndjson'}" if bad else ""
    files = ["id_map.csv", "summary.json", "failed.ndjson", "failed_reasons.csv",
             *(n for n in ("created_refs.csv", "timeline.csv", "latency.hdr.json") if (config.out / n).exists())]
    _say(f"  outputs in {config.out}: {', '.join(files)}{extra}")


async def _dry_run(config: UploadConfig, cls: type[Target]) -> int:
    from .plan import make_plan

    target = cls(base_url="", credentials={}, options=config.options)
    plan = await make_plan(config.input, target=target, max_line_bytes=config.max_line_bytes, run_dir=config.out)
    for line in plan.lines():
        print(line)
    _say(f"dry run: {plan.records} records, {plan.valid} valid, {plan.problem_count} rejected; would skip "
         f"{plan.done} already done, reconcile {plan.reconcile} possibly sent by an interrupted run, "
         f"create {plan.create}; nothing was sent")
    return EXIT_PARTIAL if plan.problem_count else EXIT_OK


async def _validate(args: argparse.Namespace) -> int:
    from .plan import make_plan

    target = None
    if args.target:
        cls = get_target(args.target)
        _check_options(cls, _options(args.option))
        target = cls(base_url="", credentials={}, options=_options(args.option))
    plan = await make_plan(args.input, target=target, max_line_bytes=args.max_line_bytes)
    for line in plan.lines():
        print(line)
    if plan.problem_count > len(plan.problems):
        print(f"... and {plan.problem_count - len(plan.problems)} more")
    _say(f"{plan.records} records: {plan.valid} valid, {plan.problem_count} with problems")
    return EXIT_PARTIAL if plan.problem_count else EXIT_OK


# --- sandbox, generate -------------------------------------------------------------------------
async def _sandbox(args: argparse.Namespace) -> int:
    from .embedded import pairing
    from .sandbox import run_forever
    from .sandbox.config import SandboxConfig

    token = None
    if args.target != "all":
        cls = get_target(args.target)
        values = [os.environ.get(name) for name in cls.credential_env]
        if all(values):
            _, token = pairing(cls).credentials(values[-1] or "")
            if len(values) > 1:
                token = ":".join(v or "" for v in values)
    config = SandboxConfig(
        token=token, rate_limit=args.rate_limit, read_rate_limit=args.read_rate_limit, burst=args.burst,
        latency_ms=args.latency,
        fail_rate=args.fail_rate, drop_rate=args.drop_rate, lose_rate=args.lose_rate, seed=args.seed,
        options={**_options(args.option), **_seed_from(args)}, state=args.state,
    )

    def ready(url: str) -> None:
        _say(f"{args.target} sandbox listening on {url} (token: {'from the environment' if token else 'any'}); "
             f"state at {url}/_sandbox/state{f', kept in {args.state}' if args.state else ''}; Ctrl-C stops it")

    # Ctrl-C / SIGTERM through the event loop's own signal handling: relying on asyncio.Runner's
    # KeyboardInterrupt left the server running now and then under uvloop (MagicStack/uvloop#295).
    try:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with anyio.create_task_group() as tg:
                tg.start_soon(run_forever, args.target, config, args.host, args.port, ready)
                async for _ in signals:
                    tg.cancel_scope.cancel()
                    break
    except BaseExceptionGroup as group:  # the server could not start: a bad --state or --option
        refused = [exc for exc in group.exceptions if isinstance(exc, ConfigError)]
        if refused:
            raise refused[0] from None
        raise
    _say("interrupted")
    return EXIT_INTERRUPTED


def _seed_from(args: argparse.Namespace) -> dict[str, Any]:
    """The dialect options ``bulk sandbox --seed-from INPUT`` adds (exit 2 when unreadable)."""
    if not args.seed_from:
        return {}
    if args.target == "all":
        raise ConfigError("--seed-from seeds one dialect: give --target agiled, anny, chargeover or coperniq")
    from .sandbox.seed_from import read_references, seed_options

    if os.path.isdir(args.seed_from) or not os.path.exists(args.seed_from):
        raise ConfigError(f"--seed-from {args.seed_from!r}: no such file (give the NDJSON export to seed from)")
    try:
        refs = read_references(args.seed_from)
    except OSError as exc:
        raise ConfigError(f"--seed-from {args.seed_from!r}: {exc.strerror or exc}") from None
    get_target(args.target)  # an unknown target is refused by argparse already
    return seed_options(args.target, refs)


def _generate(args: argparse.Namespace) -> int:
    from .generate import generate

    if args.n < 0:
        raise ConfigError("N must be >= 0")
    out = sys.stdout.buffer if args.output == "-" else open(args.output, "wb")  # noqa: SIM115
    try:
        buf = []
        for line in generate(args.n, seed=args.seed):
            buf.append(line)
            if len(buf) >= 4096:
                out.write(b"".join(buf))
                buf.clear()
        out.write(b"".join(buf))
    finally:
        if out is not sys.stdout.buffer:
            out.close()
        else:
            out.flush()
    return EXIT_OK


def _merge(args: argparse.Namespace) -> int:
    from .merge import merge_runs

    s = merge_runs([Path(d) for d in args.runs], Path(args.out))
    r = s["records"]
    _say(f"merged {len(s['shards'])} shards: {r['read']} records: {r['created']} created, {r['rejected']} rejected, "
         f"{r['failed']} failed, {r['uncertain']} uncertain")
    for cur, t in s["totals"].items():
        _say(f"  {cur}: {t['invoices']} invoices, net {t['net']}, tax {t['tax']}, gross {t['gross']}")
    _say(f"  outputs in {args.out}: id_map.csv, summary.json, failed.ndjson, failed_reasons.csv")
    return EXIT_PARTIAL if r["rejected"] or r["failed"] or r["uncertain"] else EXIT_OK


def _report_html(args: argparse.Namespace) -> int:
    from .report import write_report

    _say(f"report written to {write_report(Path(args.run_dir))} (one file: open it in any browser, offline)")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "generate":
            return _generate(args)
        if args.command == "merge":
            return _merge(args)
        if args.command == "report":
            return _report_html(args)
        runner = {"upload": _upload, "validate": _validate, "sandbox": _sandbox}[args.command]
        return anyio.run(runner, args, backend_options=loop_options())
    except ConfigError as exc:
        _say(f"error: {exc}")
        return EXIT_USAGE
    except BulkError as exc:
        _say(f"stopped: {exc}")
        return EXIT_ABORTED
    except KeyboardInterrupt:
        _say("interrupted")
        return EXIT_INTERRUPTED
