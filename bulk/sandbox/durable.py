"""Durable sandbox state: a dialect's tables and counters in one SQLite file (or in memory).

A sandbox that keeps its data between runs behaves like a real API with durable storage: the
embedded sandbox of a resumed ``bulk upload`` still knows the customers, invoices and
idempotency keys of the killed run (``sandbox.db`` in the run directory), and ``bulk sandbox
--state FILE`` can be stopped and started again.

Contract (what the framework in ``core`` relies on):

* **Tables.** ``store.table(name)`` is a :class:`Table`, a ``dict`` whose entries are saved one
  row per key. Keys are ints, strings or tuples of them; values are plain data (dict, list,
  tuple, set, str, int, float, bool, None, bytes, Decimal). Insertion order survives a restart.
* **What is saved.** Every key written (``t[k] = v``, ``setdefault``, ``update``) or deleted,
  and every key *read* (``t[k]``, ``t.get(k)``, ``setdefault``): a handler may change a stored
  object in place after fetching it by key, and that change is saved with no further call. An
  object changed in place after being reached any other way (iterating ``values()``) needs
  ``t.touch(k)``. Code that only reads (the state snapshot) runs under
  ``store.reading()``, so what it reads is not saved again for nothing.
* **Values.** ``store.save_values(owner, names)`` saves small attributes of ``owner`` (id
  counters, a dict of next ids) whenever they changed; ``restore_values`` puts them back.
* **Commit.** :meth:`DurableStore.flush` writes everything changed since the last flush in one
  transaction. :meth:`DurableStore.committed` waits for it: the framework awaits it after
  every API request, before its answer goes out, so an answer never tells of a change (its
  own or another request's) that a kill of the process can still undo. It is a group commit:
  every request handled in one turn of the event loop waits for the same transaction, run at
  the start of the next turn (a transaction costs ~0.1 ms; one per request would make the
  embedded demo markedly slower). WAL with
  ``synchronous=NORMAL``: a committed transaction is in the WAL file when ``flush`` returns,
  so it survives the process being killed at any moment (SIGKILL included; a power loss may
  lose the last transactions, never corrupt the file). A flush that fails keeps its changes
  pending and raises: the request answers 500 rather than a success that is not stored.
* **Namespaces.** Several dialects may share one file (``--target all``): each has its own
  namespace (its name); ``restored`` says whether the namespace held data when opened.
* **Without a path** nothing is written and ``flush`` costs nothing.

Rows are pickled (fast, exact for Decimal and tuple keys) and read back with an unpickler that
resolves no global except ``decimal.Decimal``: a state file cannot make the sandbox run code.
This module owns the file and the commit (:class:`DurableStore`); :class:`Table` and the row
codec live in ``_durable_table`` (``Table`` importable from here, as before).
"""

from __future__ import annotations

import asyncio
import os
import pickle
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from bulk.sandbox._durable_table import Table, dump, load
from bulk.sandbox.config import SandboxConfigError

__all__ = ["DurableStore", "Table"]

SCHEMA_VERSION = 1
_VALUES = "\0values"  # the table holding save_values()' attributes


class DurableStore:
    """The tables and values of one dialect (namespace ``namespace``) in the SQLite file
    ``path``, or only in memory when ``path`` is None. Raises SandboxConfigError when the file
    cannot be opened or is not a sandbox state file of this version."""

    def __init__(self, path: str | os.PathLike[str] | None, namespace: str) -> None:
        self.path = None if path is None else os.fspath(path)
        self.namespace = namespace
        self._tables: dict[str, Table[Any, Any]] = {}
        self._pending: dict[int, Table[Any, Any]] = {}  # by id: tables compare as dicts
        self._saved_values: dict[str, bytes] = {}
        self._rows: dict[str, list[tuple[bytes, bytes]]] = {}
        self._db: sqlite3.Connection | None = None
        self.reads_only = False  # inside reading(): reads by key are not saved
        self._waiters: list[asyncio.Future[None]] = []  # of the next group commit
        if self.path is not None:
            self._open(self.path)
        self.restored = bool(self._rows)

    # --- opening -------------------------------------------------------------------------

    def _open(self, path: str) -> None:
        try:
            # isolation_level=None: flush() runs its own BEGIN/COMMIT. Any thread: a test
            # harness builds the app in one thread and serves it in another.
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise SandboxConfigError(
                    f"sandbox state {self.path}: written by another version of bulk (schema "
                    f"{version}, this one reads {SCHEMA_VERSION}); use another file or delete it")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("CREATE TABLE IF NOT EXISTS rows (ns TEXT NOT NULL, tbl TEXT NOT NULL, "
                       "key BLOB NOT NULL, value BLOB NOT NULL, PRIMARY KEY (ns, tbl, key))")
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            for tbl, key, value in db.execute(
                    "SELECT tbl, key, value FROM rows WHERE ns = ? ORDER BY rowid", (self.namespace,)):
                self._rows.setdefault(tbl, []).append((key, value))
        except sqlite3.Error as exc:
            raise SandboxConfigError(f"sandbox state {self.path}: cannot be used ({exc}); "
                                     "give another file or delete it") from None
        self._db = db

    def _restore(self, tbl: str) -> list[tuple[Any, Any]]:
        try:
            return [(load(key), load(value)) for key, value in self._rows.pop(tbl, ())]
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
            raise SandboxConfigError(f"sandbox state {self.path}: table {tbl!r} is unreadable "
                                     f"({exc}); give another file or delete it") from None

    # --- the dialect's side ----------------------------------------------------------------

    def table(self, name: str) -> Table[Any, Any]:
        """The table ``name``: with its saved rows on first use, the same object after."""
        found = self._tables.get(name)
        if found is None:
            found = self._tables[name] = Table(self, name)
            for key, value in self._restore(name):
                dict.__setitem__(found, key, value)
        return found

    @contextmanager
    def reading(self) -> Iterator[None]:
        """A block that changes nothing: its reads by key are not noted for saving."""
        before, self.reads_only = self.reads_only, True
        try:
            yield
        finally:
            self.reads_only = before

    def save_values(self, owner: object, names: Iterable[str]) -> None:
        """Note the attributes ``names`` of ``owner`` to be saved at the next flush if changed."""
        values = self.table(_VALUES)
        for name in names:
            blob = dump(getattr(owner, name))
            if self._saved_values.get(name) != blob:
                self._saved_values[name] = blob
                values[name] = getattr(owner, name)

    def restore_values(self, owner: object, names: Iterable[str]) -> None:
        """Set the attributes ``names`` of ``owner`` that the file holds to their saved values."""
        values = self.table(_VALUES)
        for name in names:
            if name in values:
                value = dict.__getitem__(values, name)
                setattr(owner, name, value)
                self._saved_values[name] = dump(value)

    @property
    def pending(self) -> bool:
        """Whether some change is not committed yet."""
        return bool(self._pending)

    async def committed(self) -> None:
        """Return once every change made so far is committed (at once when none is pending or
        there is no file). Raises OSError when the transaction fails (its changes stay
        pending)."""
        if not self._pending:
            return
        if self._db is None:
            self.flush()
            return
        loop = asyncio.get_running_loop()
        if not self._waiters:
            loop.call_soon(self._commit_group)
        # A future per caller: one caller cancelled does not cancel the others' wait.
        waiter = loop.create_future()
        self._waiters.append(waiter)
        await waiter

    def _commit_group(self) -> None:
        waiters, self._waiters = self._waiters, []
        failure: BaseException | None = None
        try:
            self.flush()
        except OSError as exc:
            failure = exc
        for waiter in waiters:
            if not waiter.done():
                if failure is None:
                    waiter.set_result(None)
                else:
                    waiter.set_exception(failure)

    def flush(self) -> None:
        """Write every pending change in one transaction (nothing to do: no cost)."""
        if not self._pending:
            return
        if self._db is None:
            for table in self._pending.values():
                table._changed.clear()
                table._deleted.clear()
            self._pending.clear()
            return
        ns, upserts, deletes = self.namespace, [], []
        for table in self._pending.values():
            name = table.name
            upserts += [(ns, name, dump(k), dump(dict.__getitem__(table, k))) for k in table._changed]
            deletes += [(ns, name, dump(k)) for k in table._deleted]
        db = self._db
        try:
            db.execute("BEGIN")
            try:
                if deletes:
                    db.executemany("DELETE FROM rows WHERE ns = ? AND tbl = ? AND key = ?", deletes)
                db.executemany("INSERT INTO rows (ns, tbl, key, value) VALUES (?, ?, ?, ?) "
                               "ON CONFLICT (ns, tbl, key) DO UPDATE SET value = excluded.value",
                               upserts)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise OSError(f"sandbox state {self.path}: cannot save ({exc})") from exc
        for table in self._pending.values():
            table._changed.clear()
            table._deleted.clear()
        self._pending.clear()

    def wipe(self) -> None:
        """Forget everything: the file's rows of this namespace and every table's entries (the
        table objects stay valid, empty)."""
        if self._db is not None:
            self._db.execute("DELETE FROM rows WHERE ns = ?", (self.namespace,))
        for table in self._tables.values():
            dict.clear(table)
            table._changed.clear()
            table._deleted.clear()
        self._pending.clear()
        self._rows.clear()
        self._saved_values.clear()
        self.restored = False

    def close(self) -> None:
        """Flush, then close the file (the store keeps working in memory only)."""
        self.flush()
        if self._db is not None:
            self._db.close()
            self._db = None
