"""What the command line says on stderr, and the exit codes it ends with.

The CLI's one voice (``bulk: ...`` lines on stderr) and what it says when a run ends: the
summary of a finished run, and why a stopped one stopped and what to do. Exit codes: 0 every
record created; 1 finished, but some records were rejected or failed; 2 usage or configuration
error; 3 aborted but resumable; 4 finished, but a --threshold was not met; 130 interrupted,
resumable (the --help text of each is in :mod:`bulk._cli.parser`).
"""

from __future__ import annotations

import sys
from typing import Any
from urllib.parse import urlsplit

from ..config import UploadConfig
from ..errors import AuthError, BulkError
from ..targets.base import Target

__all__ = ["EXIT_ABORTED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_PARTIAL", "EXIT_THRESHOLD", "EXIT_USAGE",
           "report", "say", "stopped"]

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, EXIT_ABORTED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_THRESHOLD = 4


def say(message: str) -> None:
    """One ``bulk: ...`` line on stderr, flushed (progress and notes interleave with it)."""
    print(f"bulk: {message}", file=sys.stderr, flush=True)


def stopped(cls: type[Target], config: UploadConfig, error: BulkError, exit_code: int) -> None:
    """Why the run stopped and what to do, each said once (some messages already say it)."""
    message = str(error)
    say(f"stopped: {message}")
    if (hint := base_url_hint(cls, config.base_url, error)) is not None:
        say(hint)
    if "the same command" in message:  # e.g. a quota: "resume after <when> with the same command"
        return  # the message already says what to do
    elif isinstance(error, AuthError):
        say("nothing is lost: fix the credentials, then run the same command again to resume")
    elif exit_code == EXIT_ABORTED:
        say("nothing is lost: run the same command again to resume")
    else:  # e.g. the API refused the first (smoke test) request: the same command would fail again
        say("nothing was created: fix the configuration (--base-url, --option) and run again")


def base_url_hint(cls: type[Target], base_url: str | None, error: BulkError) -> str | None:
    """After a 404: the base URL most likely repeats the path the target adds itself."""
    if base_url is None or getattr(error, "status", None) != 404:
        return None
    prefix = cls.path_prefix
    path = urlsplit(base_url).path.rstrip("/")
    if prefix and path.endswith(prefix):
        return (f"hint: give the base URL without {prefix}, which bulk adds to every request: "
                f"--base-url {base_url[: len(base_url) - len(prefix)].rstrip('/') or base_url}")
    return f"hint: check --base-url: {cls.name} requests go to {base_url}{prefix}/..."


def report(config: UploadConfig, s: dict[str, Any]) -> None:
    """A finished (or stopped) run's summary ``s``: counts, totals, pace, measures, outputs."""
    r = s["records"]
    say(
        f"{s['target']}: {r['read']} records: {r['created']} created ({r['existing']} already existed, "
        f"{r.get('updated', 0)} updated, {r.get('unchanged', 0)} unchanged, "
        f"{r['already_done']} done by earlier runs), {r['rejected']} rejected, {r['failed']} failed, "
        f"{r['uncertain']} uncertain"
    )
    for cur, t in s["totals"].items():
        say(f"  {cur}: {t['invoices']} invoices, net {t['net']}, tax {t['tax']}, gross {t['gross']}")
    if s["mismatches"]["count"]:
        say(f"  {s['mismatches']['count']} invoice totals reported by the API differ from the money rule "
            "(see summary.json)")
    note = (s.get("reconciled") or {}).get("note")
    if note:
        say(f"  {note}")
    say(f"  {s['requests']} requests, {s['retries']} retries, {s['throttled']} throttled; "
        f"this run {s['this_run']['elapsed_seconds']:.1f} s, {s['this_run']['invoices_per_second']:.1f} invoices/s")
    from ..measure import measured_lines

    for line in measured_lines(s):
        say(f"  {line}")
    made = {kind: n for kind, n in (s.get("created_refs") or {}).items() if n}
    if made:  # --create-missing, or customers created as always
        listed = ", ".join(f"{n} {kind}{'s' if n != 1 else ''}" for kind, n in made.items())
        say(f"  created what the invoices referenced: {listed} (created_refs.csv)")
    bad = r["rejected"] + r["failed"] + r["uncertain"]
    extra = f"; fix and re-feed {config.out / 'failed.ndjson'}" if bad else ""
    files = ["id_map.csv", "summary.json", "failed.ndjson", "failed_reasons.csv",
             *(n for n in ("created_refs.csv", "timeline.csv", "latency.hdr.json") if (config.out / n).exists())]
    say(f"  outputs in {config.out}: {', '.join(files)}{extra}")

