"""``--create-missing KINDS``: what an invoice references and the API lacks, created once.

The kinds are ``customers`` and ``items`` (a comma list). Without the flag every target keeps
its old behaviour (:attr:`Target.default_create`): Agiled, anny and ChargeOver create a
customer they do not find, Coperniq creates nothing, and items must exist everywhere. With it,
the kinds it names are created where they are missing, for a target whose API can create them
(:attr:`Target.creatable`); a kind it cannot create is a usage error (exit 2) before anything
starts, never a failure of every record. On Agiled, anny and ChargeOver customers are always
created (the flag cannot turn that off: they were before).

Exactly once. A target creates a reference inside ``job.resolve`` (single flight: one
lookup-then-create per key however many records wait for it), looks it up before every create
and before any resend of one whose answer may be lost, and its id is kept in the resume file
like any resolved id. What this job created is remembered under :data:`CREATED_NS` (key
``"<kind>:<key>"``, value the API's id) and appended to ``created_refs.csv`` (:class:`RefsFile`)
in the same checkpoint, so the two agree after any crash, and a resumed run that finds the
object again (it was created before the kill) does not list it twice.

A create whose answer came in the last second before a SIGKILL (after the answer, before the
checkpoint) is listed too: the target marks every create durably before sending it
(:func:`begin_create`, a fsynced line of ``marks.log``, see :mod:`bulk.marks`), and when a later
run finds the object (its lookup, or a create refused because the key is taken) it asks
:func:`found` whether an earlier run of this job began that create: then it is listed, once.
"""

from __future__ import annotations

import contextlib
import csv
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from .errors import ConfigError, OutputError
from .outputs import escape_cell

if TYPE_CHECKING:
    from .targets.base import RunJob, Target

__all__ = ["CREATED_NS", "FILE", "HEADER", "KINDS", "OPTION", "RefsFile", "begin_create", "check_kinds",
           "found", "kinds_of", "parse_kinds", "record_created"]

KINDS = ("customers", "items")
OPTION = "create_missing"  # the target option the CLI flag travels in (to upload processes too)
CREATED_NS = "created"
BEGUN_NS = "create"  # the marks (bulk.marks) of the creates this job began
FILE = "created_refs.csv"
HEADER = ["kind", "key", "api_id"]
LISTED_KINDS = ("customer", "item", "account")  # the kind column's values (the summary's keys)


def parse_kinds(text: str) -> frozenset[str]:
    """The kinds of a ``--create-missing`` value; ConfigError (exit 2) naming a wrong one."""
    kinds = [part.strip().lower() for part in str(text).split(",") if part.strip()]
    wrong = [k for k in kinds if k not in KINDS]
    if wrong or not kinds:
        raise ConfigError(f"--create-missing {text!r}: give a comma list of {', '.join(KINDS)} "
                          "(e.g. --create-missing customers,items)")
    return frozenset(kinds)


def check_kinds(cls: type[Target], kinds: frozenset[str]) -> None:
    """Refuse (exit 2, before anything starts) a kind the target's API cannot create."""
    cannot = sorted(kinds - cls.creatable)
    if cannot:
        can = ", ".join(sorted(cls.creatable)) or "nothing"
        raise ConfigError(f"--create-missing {','.join(cannot)}: the {cls.name} API cannot create "
                          f"{' or '.join(cannot)} ({cls.cannot_create_why or 'not offered by its API'}); "
                          f"it can create: {can}")


def kinds_of(cls: type[Target], options: dict[str, Any]) -> frozenset[str]:
    """What a target instance creates: the flag's kinds (checked), else its default."""
    raw = options.get(OPTION)
    if raw is None or raw == "":
        return cls.default_create
    kinds = parse_kinds(str(raw))
    check_kinds(cls, kinds)
    return kinds | cls.default_create


def record_created(job: RunJob, kind: str, key: str, api_id: str) -> None:
    """Say that this job created ``kind`` ``key`` (``customer``, ``item``, ``account``)."""
    job.remember(CREATED_NS, f"{kind}:{key}", api_id)


async def begin_create(job: RunJob, kind: str, key: str) -> None:
    """Call before every create of ``kind`` ``key`` is sent: marks it durably, so a run killed
    after the create's answer (before its checkpoint) lists it when resumed (:func:`found`)."""
    await job.mark(BEGUN_NS, f"{kind}:{key}")


def found(job: RunJob, kind: str, key: str, api_id: str) -> None:
    """Call when the API already holds ``kind`` ``key`` (a lookup found it, or a create was
    refused because the key is taken): if an earlier run of this job began creating it, the
    object is this job's creation (its answer came after that run's last checkpoint) and is
    listed, once (``record_created`` adds a row only for a ref not yet remembered)."""
    if job.marked_before(BEGUN_NS, f"{kind}:{key}"):
        record_created(job, kind, key, api_id)


class RefsFile:
    """``created_refs.csv``: appended when a created reference is first remembered, flushed and
    fsynced with the other outputs, cut back to its checkpointed size on resume (as
    :class:`bulk.outputs.Outputs` does: a crash never leaves a torn or a doubled row)."""

    def __init__(self, run_dir: Path, sizes: dict[str, int] | None, known: Iterable[str]) -> None:
        self.path = run_dir / FILE
        keep = (sizes or {}).get(FILE, 0)
        try:
            self._f: TextIO = open(self.path, "a", encoding="utf-8", newline="")  # noqa: SIM115 - kept open until close()
            if self._f.tell() > keep:  # rows the checkpoint does not cover (never extended: NULs)
                self._f.truncate(keep)
                self._f.seek(keep)
            if self._f.tell() == 0:
                csv.writer(self._f, lineterminator="\n").writerow(HEADER)
        except OSError as exc:
            raise OutputError(f"cannot write {self.path}: {exc.strerror or exc}") from None
        self._csv = csv.writer(self._f, lineterminator="\n")
        self._whole = keep
        self.counts: dict[str, int] = {}
        for ref in known:  # what earlier runs created (committed with the rows they wrote)
            kind = ref.partition(":")[0]
            self.counts[kind] = self.counts.get(kind, 0) + 1

    def add(self, ref: str, api_id: str) -> None:
        """Append one row (``ref`` is ``"<kind>:<key>"``); called once per new ref."""
        kind, _, key = ref.partition(":")
        try:
            self._csv.writerow([escape_cell(kind), escape_cell(key), escape_cell(api_id)])
        except OSError as exc:
            raise OutputError(f"cannot append to {FILE}: {exc.strerror or exc}") from None
        self.counts[kind] = self.counts.get(kind, 0) + 1

    def flush(self) -> int:
        try:
            self._f.flush()
            self._whole = self._f.tell()
            return self._whole
        except OSError as exc:
            raise OutputError(f"cannot write {FILE}: {exc.strerror or exc}") from None

    def sync(self) -> None:
        """fsync the file; any thread (a checkpoint's worker thread), as Outputs.sync."""
        try:
            os.fsync(self._f.fileno())
        except OSError as exc:
            raise OutputError(f"cannot sync {FILE}: {exc.strerror or exc}") from None

    def summary(self) -> dict[str, int]:
        return {kind: self.counts.get(kind, 0) for kind in LISTED_KINDS}

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._f.close()
        with contextlib.suppress(OSError):
            if os.path.getsize(self.path) > self._whole:
                os.truncate(self.path, self._whole)
