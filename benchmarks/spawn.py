"""Run one command and write its wall time and resource usage as JSON to a file.

The harness starts every client through this small, fresh process instead of forking the
client itself: Linux carries the peak RSS of the process that spawns a program into the
program's own ``ru_maxrss`` (the pre-exec image counts), so a client spawned straight from a
harness holding a large sandbox state would report the harness's peak, not its own.

    python -m benchmarks.spawn RESULT.json -- COMMAND [ARG...]
"""

from __future__ import annotations

import json
import os
import sys
import time


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
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - t0
    with open(result, "w") as f:
        json.dump({"wall": wall, "utime": usage.ru_utime, "stime": usage.ru_stime, "maxrss_kb": usage.ru_maxrss,
                   "exit_code": os.waitstatus_to_exitcode(status)}, f)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
