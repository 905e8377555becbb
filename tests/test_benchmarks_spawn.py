"""benchmarks.spawn's tree sampler: which process of a client's tree holds what.

``bulk --processes N`` is a parent and N shard workers; the memory goal sums their RSS. The
sampler also says each process's share at the summed peak (root first) and the summed PSS,
where a page the processes share counts once (2026-12-02: 159.3 MB summed RSS at 200,000
records was 44.9 for the parent + 57.3 + 57.1 for the workers, 114.8 MB PSS)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from harness import REPO

from benchmarks import spawn

MB = 1024
pytestmark = pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(),
                                reason="benchmarks.spawn reads Linux /proc/PID/smaps_rollup (Linux 4.14+), not here")

HELD_MB = 40

# A root that starts one child; the child fills HELD_MB of its own memory, says "ready" and
# holds it until its stdin (the test's pipe, through the root) closes.
_CHILD = f"import sys; b = bytes([1]) * ({HELD_MB} << 20); print('ready', flush=True); sys.stdin.read()"
_ROOT = f"import subprocess, sys; sys.exit(subprocess.call([sys.executable, '-c', {_CHILD!r}]))"


def test_a_sample_names_each_process_of_the_tree_root_first() -> None:
    with subprocess.Popen([sys.executable, "-c", _ROOT], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          text=True) as root:
        assert root.stdout is not None and root.stdin is not None
        try:
            assert root.stdout.readline() == "ready\n"  # the child holds its memory now
            s = spawn.sample(root.pid)
        finally:
            root.stdin.close()  # the child reads its end: both exit
            root.wait(timeout=30)
    assert len(s.parts_kb) == 2, s
    parent, child = s.parts_kb
    assert child >= HELD_MB * MB > parent, s  # the child's bytes are the child's, not the root's
    assert s.rss_kb == parent + child
    # Both interpreters map the same files: counted once in the PSS, so it is below the RSS sum,
    # and it still holds the child's own bytes.
    assert HELD_MB * MB <= s.pss_kb < s.rss_kb, s


def test_the_result_file_has_the_tree_figures(tmp_path: Path) -> None:
    result = tmp_path / "usage.json"
    subprocess.run([sys.executable, "-m", "benchmarks.spawn", str(result), "--", sys.executable, "-c", "pass"],
                   check=True, cwd=REPO, timeout=60)
    usage = json.loads(result.read_text())
    assert usage["exit_code"] == 0
    assert usage["tree_rss_kb"] >= usage["maxrss_kb"] > 0
    assert isinstance(usage["tree_pss_kb"], int) and isinstance(usage["tree_rss_parts_kb"], list)
