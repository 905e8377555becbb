"""Target API adapters, found by name. Third parties add one via the ``bulk.targets`` entry points."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ..errors import ConfigError
from .base import Created, Job, Target

if TYPE_CHECKING:
    from importlib.metadata import EntryPoints

__all__ = ["TARGETS", "Created", "Job", "Names", "Target", "available_targets", "get_target", "names"]

TARGETS: dict[str, str] = {
    "agiled": "bulk.targets.agiled:AgiledTarget",
    "anny": "bulk.targets.anny:AnnyTarget",
    "chargeover": "bulk.targets.chargeover:ChargeOverTarget",
    "coperniq": "bulk.targets.coperniq:CoperniqTarget",
}


def _entry_points() -> EntryPoints:
    """The ``bulk.targets`` entry points. importlib.metadata (~30 ms to import, and a scan of every
    installed distribution) is loaded only when a name is not a built-in target, or all are listed."""
    from importlib.metadata import entry_points

    return entry_points(group="bulk.targets")


class Names:
    """The target names as argparse ``choices``: a built-in name is found without looking at the
    entry points (what nearly every command line gives); an other name, or a listing (help, a
    usage error), looks at them. ``extra`` are names the command adds (``sandbox``: ``all``)."""

    def __init__(self, *extra: str) -> None:
        self._extra = extra

    def __contains__(self, name: object) -> bool:
        return name in TARGETS or name in self._extra or name in list(self)

    def __iter__(self) -> Iterator[str]:
        return iter([*available_targets(), *self._extra])


def available_targets() -> list[str]:
    """Every registered target name, sorted: the built-in ones and the ``bulk.targets`` entry points."""
    found = set(TARGETS)
    found.update(ep.name for ep in _entry_points())
    return sorted(found)


def names() -> list[str]:
    """The registered targets (as :func:`available_targets`): what a suite parametrizes over,
    so a target registered through an entry point is tested like the built-in ones."""
    return available_targets()


def get_target(name: str) -> type[Target]:
    """The adapter class registered as ``name``; a ConfigError lists the available ones."""
    spec = TARGETS.get(name)
    if spec is None:
        for ep in _entry_points():
            if ep.name == name:
                cls = ep.load()
                break
        else:
            raise ConfigError(f"unknown target {name!r}; available: {', '.join(available_targets())}")
    else:
        module, _, attr = spec.partition(":")
        try:
            cls = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"target {name!r} is not available in this build ({exc})") from None
    if not (isinstance(cls, type) and issubclass(cls, Target)):
        raise ConfigError(f"target {name!r} does not implement bulk.targets.Target")
    return cls
