"""Run one command and write its wall time and resource usage as JSON to a file.

The harness starts every client through this small, fresh process instead of forking the
client itself: Linux carries the peak RSS of the process that spawns a program into the
program's own ``ru_maxrss`` (the pre-exec image counts), so a client spawned straight from a
harness holding a large sandbox state would report the harness's peak, not its own.

It also samples, every 50 ms, the memory of the program *and its child processes* summed
(``bulk --processes N`` runs N upload processes under the parent): ``ru_maxrss`` is the peak of
one process only. Written:

- ``tree_rss_kb``: the peak of the summed RSS (the figure the benchmarks report). A page of a
  file every process maps (the interpreter, the extension modules) counts once per process.
- ``tree_pss_kb``: the peak of the summed PSS (``/proc/PID/smaps_rollup``), where a shared
  page counts once in all: what the tree takes from the machine. 0 where the kernel has no
  ``smaps_rollup``.
- ``tree_rss_parts_kb``: each process's RSS at the moment of the summed RSS peak, the program
  first, then its descendants (depth first): which process holds what.

    python -m benchmarks.spawn RESULT.json [--cpus 0,1] -- COMMAND [ARG...]

``--cpus`` runs the program (and so every process it starts) on those CPUs only
(``sched_setaffinity``): ``benchmarks.run --pin`` keeps the clients off the server's CPU.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo.extend(int(c) for c in reversed(f.read().split()))
        except OSError:
            pass
    return out


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    except (OSError, IndexError, ValueError):
        return 0


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return next((int(ln.split()[1]) for ln in f if ln.startswith("Pss:")), 0)
    except (OSError, IndexError, ValueError):
        return 0


@dataclass
class TreeSample:
    """One look at a process tree: each live process's RSS (the root first) and the PSS summed."""

    parts_kb: list[int] = field(default_factory=list)
    pss_kb: int = 0

    @property
    def rss_kb(self) -> int:
        return sum(self.parts_kb)


def sample(pid: int) -> TreeSample:
    """The memory of ``pid`` and its descendants now (a process gone meanwhile counts 0 and is left out)."""
    s = TreeSample()
    for p in _tree(pid):
        rss = _rss_kb(p)
        if rss:
            s.parts_kb.append(rss)
            s.pss_kb += _pss_kb(p)
    return s


@dataclass
class Peaks:
    rss: TreeSample = field(default_factory=TreeSample)  # the sample with the largest summed RSS
    pss_kb: int = 0
    cpus: list[int] = field(default_factory=list)  # the CPUs the program may run on, as last seen


def _sample_tree(pid: int, peaks: Peaks, done: threading.Event) -> None:
    while not done.wait(0.05):
        s = sample(pid)
        if s.rss_kb > peaks.rss.rss_kb:
            peaks.rss = s
        peaks.pss_kb = max(peaks.pss_kb, s.pss_kb)
        with contextlib.suppress(OSError):  # it has exited
            peaks.cpus = sorted(os.sched_getaffinity(pid))


def main() -> int:
    result, sep, *cmd = sys.argv[1:]
    cpus: set[int] | None = None
    if sep == "--cpus" and len(cmd) > 1:
        cpus = {int(c) for c in cmd[0].split(",")}
        sep, *cmd = cmd[1:]
    if sep != "--" or not cmd:
        raise SystemExit(__doc__)
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        try:
            if cpus is not None:
                os.sched_setaffinity(0, cpus)
            os.execvp(cmd[0], cmd)
        finally:
            os._exit(127)
    peaks, done = Peaks(), threading.Event()
    sampler = threading.Thread(target=_sample_tree, args=(pid, peaks, done), daemon=True)
    sampler.start()
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - t0
    done.set()
    sampler.join()
    with open(result, "w") as f:
        json.dump({"wall": wall, "utime": usage.ru_utime, "stime": usage.ru_stime, "maxrss_kb": usage.ru_maxrss,
                   "tree_rss_kb": max(peaks.rss.rss_kb, usage.ru_maxrss), "tree_pss_kb": peaks.pss_kb,
                   "tree_rss_parts_kb": peaks.rss.parts_kb, "cpus": peaks.cpus,
                   "exit_code": os.waitstatus_to_exitcode(status)}, f)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
