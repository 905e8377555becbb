"""The target contract's rule on waiting (``Target.upload`` in ``bulk.targets.base``): a target
never sleeps to pace or retry; the only waits in a target's code are the settle waits the
contract names. Read from the source (every ``bulk/targets`` module), so a new sleep anywhere
fails here until the contract names it.
"""

from __future__ import annotations

import ast
from pathlib import Path

from bulk.targets.base import Target

TARGETS_DIR = Path(__file__).resolve().parent.parent / "bulk" / "targets"
#: (module, enclosing function) of every sleep the contract allows, and the words naming it there
ALLOWED = {("_anny_calls", "Calls.settled"): "``Calls.settled``",
           ("_anny_calls", "Calls.create.recover"): "``recover`` in ``Calls.create``",
           ("coperniq", "CoperniqTarget._create.recover"): "``recover`` in ``CoperniqTarget._create``"}


def _sleeps(path: Path) -> set[tuple[str, str]]:
    """(module, dotted enclosing function) of every call to something named ``sleep`` in ``path``."""
    found: set[tuple[str, str]] = set()

    def visit(node: ast.AST, scope: tuple[str, ...]) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                visit(child, (*scope, child.name))
                continue
            if isinstance(child, ast.Call):
                func = child.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if name in ("sleep", "sleep_until", "sleep_forever"):
                    found.add((path.stem, ".".join(scope)))
            visit(child, scope)

    visit(ast.parse(path.read_text(encoding="utf-8")), ())
    return found


def test_targets_sleep_only_where_the_contract_says() -> None:
    sleeps = set().union(*(_sleeps(path) for path in sorted(TARGETS_DIR.glob("*.py"))))
    assert sleeps == set(ALLOWED), f"sleeps in bulk/targets not named by Target.upload's contract: {sleeps}"


def test_the_contract_names_each_settle_wait() -> None:
    contract = " ".join((Target.upload.__doc__ or "").split())
    assert "settle" in contract and "Never sleep to pace or retry" in contract
    for where in ALLOWED.values():
        assert where in contract, f"Target.upload's docstring does not name {where}"


def test_the_scan_sees_a_sleep(tmp_path: Path) -> None:
    """The scan is not blind: a sleep in a nested function is found with its scope."""
    path = tmp_path / "mod.py"
    path.write_text("import anyio\nclass A:\n    async def f(self):\n        async def g():\n"
                    "            await anyio.sleep(1)\n        await g()\n", encoding="utf-8")
    assert _sleeps(path) == {("mod", "A.f.g")}
