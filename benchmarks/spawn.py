"""Run one command and write its wall time and resource usage as JSON to a file.

The harness starts every client through this small, fresh process instead of forking the
client itself: Linux carries the peak RSS of the process that spawns a program into the
program's own ``ru_maxrss`` (the pre-exec image counts), so a client spawned straight from a
harness holding a large sandbox state would report the harness's peak, not its own.

It also samples, every 50 ms, the RSS of the program *and its child processes* summed
(``bulk --processes N`` runs N upload processes under the parent): ``ru_maxrss`` is the peak of
one process only.

    python -m benchmarks.spawn RESULT.json -- COMMAND [ARG...]
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return out


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    except (OSError, IndexError, ValueError):
        return 0


def _sample_tree(pid: int, peak: list[int], done: threading.Event) -> None:
    while not done.wait(0.05):
        peak[0] = max(peak[0], sum(_rss_kb(p) for p in _tree(pid)))


def main() -> int:
    result, sep, *cmd = sys.argv[1:]
    if sep != "--" or not cmd:
        raise SystemExit(__doc__)
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        try:
            os.execvp(cmd[0], cmd)
        finally:
            os._exit(127)
    peak, done = [0], threading.Event()
    sampler = threading.Thread(target=_sample_tree, args=(pid, peak, done), daemon=True)
    sampler.start()
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - t0
    done.set()
    sampler.join()
    with open(result, "w") as f:
        json.dump({"wall": wall, "utime": usage.ru_utime, "stime": usage.ru_stime, "maxrss_kb": usage.ru_maxrss,
                   "tree_rss_kb": max(peak[0], usage.ru_maxrss),
                   "exit_code": os.waitstatus_to_exitcode(status)}, f)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
