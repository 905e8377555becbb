"""The commands that send nothing: ``validate``, ``generate``, ``merge`` and ``report``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import ConfigError
from ..targets import get_target
from .console import EXIT_OK, EXIT_PARTIAL, say
from .settings import check_options, parse_options

__all__ = ["generate", "merge", "report_html", "validate"]


async def validate(args: argparse.Namespace) -> int:
    """Every problem of the input (and of the target's own rules with ``--target``) on stdout: exit 1 if any."""
    from ..plan import make_plan

    target = None
    if args.target:
        cls = get_target(args.target)
        check_options(cls, parse_options(args.option))
        target = cls(base_url="", credentials={}, options=parse_options(args.option))
    plan = await make_plan(args.input, target=target, max_line_bytes=args.max_line_bytes)
    for line in plan.lines():
        print(line)
    if plan.problem_count > len(plan.problems):
        print(f"... and {plan.problem_count - len(plan.problems)} more")
    say(f"{plan.records} records: {plan.valid} valid, {plan.problem_count} with problems")
    return EXIT_PARTIAL if plan.problem_count else EXIT_OK


def generate(args: argparse.Namespace) -> int:
    """N synthetic valid invoices to ``--output`` (stdout by default), written in batches."""
    from ..generate import generate as invoices

    if args.n < 0:
        raise ConfigError("N must be >= 0")
    out = sys.stdout.buffer if args.output == "-" else open(args.output, "wb")  # noqa: SIM115
    try:
        buf = []
        for line in invoices(args.n, seed=args.seed):
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


def merge(args: argparse.Namespace) -> int:
    """The shards' run directories into a new one: exit 1 when a record was rejected, failed or uncertain."""
    from ..merge import merge_runs

    s = merge_runs([Path(d) for d in args.runs], Path(args.out))
    r = s["records"]
    say(f"merged {len(s['shards'])} shards: {r['read']} records: {r['created']} created, {r['rejected']} rejected, "
        f"{r['failed']} failed, {r['uncertain']} uncertain")
    for cur, t in s["totals"].items():
        say(f"  {cur}: {t['invoices']} invoices, net {t['net']}, tax {t['tax']}, gross {t['gross']}")
    say(f"  outputs in {args.out}: id_map.csv, summary.json, failed.ndjson, failed_reasons.csv")
    return EXIT_PARTIAL if r["rejected"] or r["failed"] or r["uncertain"] else EXIT_OK


def report_html(args: argparse.Namespace) -> int:
    """RUN_DIR/report.html from a run directory's outputs."""
    from ..report import write_report

    say(f"report written to {write_report(Path(args.run_dir))} (one file: open it in any browser, offline)")
    return EXIT_OK
