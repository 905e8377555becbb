"""One process's instruction count under ``valgrind --tool=callgrind`` (the harnesses' shared step)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def total(module: str, args: list[str], out: Path) -> int:
    """Run ``python -m module *args`` under callgrind, writing ``out``; its total instructions."""
    subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, "-m",
                    module, *args], check=True, capture_output=True, cwd=ROOT)
    match = re.search(rb"^(?:summary|totals): (\d+)", out.read_bytes(), re.M)
    assert match is not None
    return int(match[1])
