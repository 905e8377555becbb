"""A durable table: a ``dict`` that notes which of its entries changed, for its
:class:`~bulk.sandbox.durable.DurableStore` to save (the contract is in ``durable``'s
docstring), and the row codec: pickled rows, read back by an unpickler that resolves no global
except ``decimal.Decimal`` (a state file cannot make the sandbox run code)."""

from __future__ import annotations

import io
import pickle
from collections.abc import Hashable
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from bulk.sandbox.durable import DurableStore

__all__ = ["Table", "dump", "load"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

_MISSING = object()
_PROTOCOL = 5


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("decimal", "Decimal"):
            return Decimal
        raise pickle.UnpicklingError(f"a sandbox state file may not name {module}.{name}")


def load(blob: bytes) -> Any:
    return _Unpickler(io.BytesIO(blob)).load()


def dump(value: Any) -> bytes:
    return pickle.dumps(value, protocol=_PROTOCOL)


class Table(dict[K, V]):
    """A dict whose changed (written, deleted or read-by-key) entries its store saves."""

    __slots__ = ("_changed", "_deleted", "_store", "name")

    def __init__(self, store: DurableStore, name: str) -> None:
        super().__init__()
        self._store = store
        self.name = name
        # A dict as an ordered set: new keys reach the file in insertion order.
        self._changed: dict[K, None] = {}
        self._deleted: set[K] = set()

    def _mark(self, key: K) -> None:
        if not self._changed:
            self._store._pending[id(self)] = self
        self._changed[key] = None

    def touch(self, key: K) -> None:
        """Save ``key``'s value at the next flush (it was changed in place)."""
        if key in self:
            self._mark(key)

    def __getitem__(self, key: K) -> V:
        value = dict.__getitem__(self, key)
        if not self._store.reads_only:
            self._mark(key)
        return value

    def get(self, key: K, default: Any = None) -> Any:
        value = dict.get(self, key, _MISSING)
        if value is _MISSING:
            return default
        if not self._store.reads_only:
            self._mark(key)
        return value

    def __setitem__(self, key: K, value: V) -> None:
        dict.__setitem__(self, key, value)
        self._deleted.discard(key)
        self._mark(key)

    def setdefault(self, key: K, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
            return default
        return self[key]

    def update(self, *args: Any, **kwargs: Any) -> None:
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def __delitem__(self, key: K) -> None:
        dict.__delitem__(self, key)
        self._forget(key)

    def pop(self, key: K, *default: Any) -> Any:
        if key in self:
            value = dict.pop(self, key)
            self._forget(key)
            return value
        if default:
            return default[0]
        raise KeyError(key)

    def popitem(self) -> tuple[K, V]:
        key, value = dict.popitem(self)
        self._forget(key)
        return key, value

    def clear(self) -> None:
        for key in list(self):
            self._forget(key)
        dict.clear(self)

    def _forget(self, key: K) -> None:
        self._changed.pop(key, None)
        self._deleted.add(key)
        self._store._pending[id(self)] = self
