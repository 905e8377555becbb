"""The package stays readable: one concept per module, none past ~300 lines (issue 12).

A module that grows past the limit is split by concept (see ../shared/STYLE.md), not
exempted here; the failure names every module over it and its size.
"""

from __future__ import annotations

from pathlib import Path

import bulk

LIMIT = 300
PACKAGE = Path(bulk.__file__).parent


def _sizes() -> dict[str, int]:
    return {str(p.relative_to(PACKAGE.parent)): len(p.read_text(encoding="utf-8").splitlines())
            for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_module_is_at_most_300_lines() -> None:
    sizes = _sizes()
    assert len(sizes) > 20, sizes  # the walk found the package, not an empty folder
    over = {name: n for name, n in sizes.items() if n > LIMIT}
    assert not over, f"split these by concept: {over}"


def test_every_module_says_what_it_owns() -> None:
    missing = []
    for p in sorted(PACKAGE.rglob("*.py")):
        text = p.read_text(encoding="utf-8").lstrip()
        if text and not text.startswith(('"""', 'r"""')):
            missing.append(str(p.relative_to(PACKAGE.parent)))
    assert not missing, f"give these a module docstring: {missing}"
