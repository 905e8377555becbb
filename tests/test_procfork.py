"""bulk._procfork at its seam: workers forked by a one-thread process (a subprocess here: the
test process runs threads, and fork_workers refuses to fork then), handed their tasks, waited
for and reaped, with the exit codes the interpreter itself would give."""

from __future__ import annotations

import subprocess
import sys
import threading

import orjson
from harness import REPO

import bulk._procfork

SCRIPT = r"""
import os, signal, sys, anyio, orjson
from bulk._procfork import fork_workers

def run(fd):
    with open(fd, "rb") as pipe:
        task = pipe.read()
    if not task:
        return 0  # never handed one
    if task == b"exit7":
        return 7
    if task == b"none":
        raise SystemExit
    if task == b"message":
        raise SystemExit("bye from a worker")
    if len(task) > 100_000:
        return 5 if task == b"x" * len(task) else 6
    raise RuntimeError("boom in a worker")

pool = fork_workers(7, run)
assert pool is not None, "one thread, Linux: it forks"
assert pool.take(6) is None  # not the pool's N: the caller spawns instead
workers = pool.take(7)
assert workers is not None and pool.take(7) is None  # given once

async def main():
    os.kill(workers[5].pid, signal.SIGKILL)
    tasks = [b"exit7", b"none", b"message", b"crash", b"x" * 300_000, b"dead"]
    for w, task in zip(workers, tasks):
        await w.hand(task)  # more than a pipe holds; and to a dead worker: no error
    return [await w.wait() for w in workers[:6]]

codes = anyio.run(main)
pool.close()  # the 7th, never handed a task, ends at once
print(orjson.dumps({"codes": codes, "idle": workers[6].returncode}).decode())
"""


def test_forked_workers_take_their_tasks_and_exit_as_the_interpreter_would() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    result = orjson.loads(done.stdout)
    assert result["codes"] == [7, 0, 1, 1, 5, -9], done.stderr
    assert result["idle"] == 0
    assert "bye from a worker" in done.stderr and "RuntimeError: boom in a worker" in done.stderr


def test_a_process_running_another_thread_does_not_fork() -> None:
    stop = threading.Event()
    t = threading.Thread(target=stop.wait, daemon=True)
    t.start()
    try:
        assert bulk._procfork.fork_workers(2, lambda fd: 0) is None
    finally:
        stop.set()
        t.join()
