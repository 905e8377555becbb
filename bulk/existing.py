"""``--on-existing fail|skip|update``: what a target does with an invoice the API already holds
under the record's external id (its idempotency key, unique number or external key).

The policy is a target attribute (``Target.on_existing``), passed by the CLI as the reserved
option key :data:`ON_EXISTING_KEY` so that it reaches the upload processes with the options.

- ``skip`` (the default, today's behaviour): the invoice is left as it is; the ID map names
  it with action ``existing``. Today a second run directory over invoices that already exist
  found them (ChargeOver, anny: by key or number) and reported them as existing; Agiled failed
  those whose body differs (409); ``skip`` keeps the first and makes the second consistent.
- ``fail``: the record fails (``failed_reasons.csv``) naming the API's invoice id and the flag.
  An invoice this job itself may have made (a lost answer, a killed run) is never failed.
- ``update``: the invoice is changed to match the record where the API allows it (action
  ``updated``); one that already matches is ``unchanged`` and nothing is written. Where the
  API refuses the change (a sent or paid invoice) the record fails with the API's own
  status, field and message.

:func:`settle` is the one decision every target calls once it has found the invoice and
compared it with the record; the target supplies the write (``update``) and the re-read.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from .errors import ConfigError, RecordRefused

__all__ = ["DEFAULT", "ON_EXISTING_KEY", "POLICIES", "already_exists", "on_existing_policy", "settle"]

ON_EXISTING_KEY = "on_existing"
POLICIES = ("fail", "skip", "update")
DEFAULT = "skip"

#: the ``job.progress`` key holding the API id of an invoice whose update has begun
UPDATING = "updating"


def on_existing_policy(raw: object) -> str:
    value = DEFAULT if raw is None else str(raw)
    if value not in POLICIES:
        raise ConfigError(f"--on-existing {value}: use one of {', '.join(POLICIES)}")
    return value


def already_exists(target: str, invoice_id: str, how: str, *, field: str = "") -> RecordRefused:
    """The failure row of ``--on-existing fail``: names the API id and the flags that change it."""
    return RecordRefused(409, f"the invoice already exists at {target} as invoice {invoice_id} ({how}); "
                         "--on-existing update changes it to match this record, --on-existing skip leaves it",
                         stage="existing", field=field)


async def settle(job: object, policy: str, *, target: str, invoice_id: str, how: str, same: bool, ours: bool,
                 update: Callable[[], Awaitable[bool]], field: str = "") -> str:
    """Decide and do what happens to an existing invoice; return the ID map's action.

    ``same``: its content already equals the record's (as the API shows it). ``ours``: this
    job may have made it itself (an answer lost, a killed run before). ``update()`` writes the
    record's content and returns whether the API now shows it (a re-read and compare).

    The update is marked in ``job.progress`` before its first write, so a killed run's resumed
    run finishes it (and reports ``updated``) even when every write had already landed."""
    progress = getattr(job, "progress", {})
    begun = progress.get(UPDATING) == invoice_id
    if same:
        if begun:
            return "updated"  # a killed run's update had landed in full
        if ours or policy == "skip":
            return "existing"
        if policy == "fail":
            raise already_exists(target, invoice_id, how, field=field)
        return "unchanged"
    if policy == "skip" and not begun:
        return "existing"
    if policy == "fail" and not begun:
        raise already_exists(target, invoice_id, how, field=field)
    progress[UPDATING] = invoice_id
    if not await update():
        raise RecordRefused(409, f"{target} invoice {invoice_id} was updated but does not read back equal to the "
                            "record (changed at the same time by someone else?); upload failed.ndjson again with "
                            "--on-existing update to retry it",
                            stage="update", field=field)
    return "updated"
