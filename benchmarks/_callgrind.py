"""The harnesses' shared steps: byte-compile the code before measuring it, and one process's
instruction count under ``valgrind --tool=callgrind``.

:func:`precompile`: this machine (like many CI and container set-ups) sets
``PYTHONDONTWRITEBYTECODE=1``, and ``bulk`` is an editable install, so without a step like this
every process a benchmark starts compiles every ``bulk`` module from source (~0.3 s of CPU a
process here), which a user's ``pip install`` (it writes the ``.pyc`` files) never pays. The
variable only stops *writing* bytecode: a ``.pyc`` already in ``__pycache__`` is read, so
compiling once, before the first round, is enough for every child.
"""

from __future__ import annotations

import compileall
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: the packages a benchmark runs from this tree (the rest is installed, with its .pyc files)
PACKAGES = ("bulk", "benchmarks")
_compiled = False


def precompile(enabled: bool = True, dirs: Sequence[Path] | None = None) -> None:
    """Byte-compile :data:`PACKAGES` into their ``__pycache__`` (quiet; only what is out of date),
    so that the processes measured read bytecode as an installed package's would. With
    ``enabled=False`` (the harnesses' ``--no-precompile``, for an A/B) remove those ``.pyc``
    files instead: every process then compiles from source, as with ``PYTHONDONTWRITEBYTECODE``
    and no compiled tree. ``dirs``: other directories than this tree's packages (tests)."""
    global _compiled
    if enabled and _compiled and dirs is None:
        return
    for d in dirs if dirs is not None else [ROOT / name for name in PACKAGES]:
        if enabled:
            if not compileall.compile_dir(d, quiet=1):
                raise RuntimeError(f"cannot byte-compile {d}")
        else:
            for cache in list(d.rglob("__pycache__")):
                shutil.rmtree(cache, ignore_errors=True)
    if dirs is None:
        _compiled = enabled


def total(module: str, args: list[str], out: Path, *, compiled: bool = True) -> int:
    """Run ``python -m module *args`` under callgrind, writing ``out``; its total instructions.
    The tree is byte-compiled first (:func:`precompile`) unless ``compiled`` is false."""
    if compiled:
        precompile()
    subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, "-m",
                    module, *args], check=True, capture_output=True, cwd=ROOT)
    match = re.search(rb"^(?:summary|totals): (\d+)", out.read_bytes(), re.M)
    assert match is not None
    return int(match[1])
