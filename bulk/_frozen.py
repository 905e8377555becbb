"""Fast construction of frozen, slotted dataclasses for the per-record hot path.

A frozen dataclass's generated ``__init__`` must get past its own ``__setattr__`` (which
refuses every change), so it sets each field with ``object.__setattr__``: about 0.3 µs a
field. The parser builds half a dozen such objects per record (the record, its customer and
address, one per line), which measured ~10 µs of a record's ~150 µs. :func:`constructor`
returns a function that builds the very same object as an instance of a plain class with
the very same slots (each field one specialised attribute store, no descriptor call), then
sets its ``__class__`` to ``cls``, which Python allows between classes of one layout:
2.8k instructions for a ``Line`` against 10k with ``Line(...)``. The function is generated
with ``exec``, as ``dataclasses`` generates ``__init__`` itself.

It takes every field, positionally, and runs no ``__post_init__`` (the classes it is used
for have none). The result is indistinguishable from ``cls(*values)``: same type, same
fields, still frozen.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["constructor"]

T = TypeVar("T")


def constructor(cls: type[T]) -> Callable[..., T]:
    """A fast ``cls(field1, field2, ...)`` for a ``@dataclass(frozen=True, slots=True)`` class."""
    names = tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]  # type[T]: not known as a dataclass
    dataclass_params = getattr(cls, "__dataclass_params__")  # noqa: B009 - type[T] does not declare it (mypy)
    if not dataclass_params.frozen or cls.__dict__.get("__slots__") != names:
        raise TypeError(f"{cls.__name__} is not a frozen dataclass with exactly its fields as slots")
    if hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__} has a __post_init__, which this constructor would skip")
    draft = type(f"_{cls.__name__}Draft", (), {"__slots__": names})
    lines = [f"def make({', '.join(names)}):", "    obj = _draft()"]
    lines += [f"    obj.{name} = {name}" for name in names]
    lines += ["    obj.__class__ = _cls", "    return obj"]
    namespace: dict[str, Any] = {"_draft": draft, "_cls": cls}
    exec("\n".join(lines), namespace)  # exec is safe here: a fixed template over the class's own field names
    make: Callable[..., T] = namespace["make"]
    make.__qualname__ = make.__name__ = f"make_{cls.__name__}"
    make.__doc__ = f"Build a {cls.__name__} (see bulk._frozen)."
    return make
