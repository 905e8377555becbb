"""A checkpoint's durable part runs in a worker thread: the loop goes on uploading meanwhile, and
a SIGKILL while that thread is inside the state.db commit loses nothing and doubles nothing.

The moment is made observable in the child only (a prelude, no hook in bulk): a periodic
checkpoint's COMMIT writes a marker naming its thread, then waits until the process is killed.
The test kills on progress: once the marker is there *and* the server has gained more invoices
than the run's concurrency could have had in flight when the commit began (on the event loop's
thread that could never happen: the loop would be stuck in the commit).
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from harness import (
    REPO,
    SandboxServer,
    assert_counts,
    assert_outputs_whole,
    client_env,
    created_count,
    resume_to_the_end,
    stop,
    upload_args,
    wait_until,
    write_input,
)

import bulk.targets

TARGETS = bulk.targets.names()
CONCURRENCY = 4

#: In the child, before bulk starts: hold the COMMIT of the first checkpoint that the periodic
#: checkpointer (``Run._checkpointer``) took once the producer's write-ahead reservation is
#: committed (its document keeps the last one's ``reserved``, > 0), after writing the committing
#: thread's name to HOLD_COMMIT_MARKER. It wraps every StateStore's writing connection (the
#: loop's one before the change: whichever commits). Which task took the checkpoint is a
#: context variable the checkpointer sets: anyio runs a worker thread in its caller's context.
#: (The document alone cannot tell: a periodic checkpoint that acquired the lock just before the
#: producer's reservation snapshots it too, and then the producer's own checkpoint, the next,
#: is the one that "keeps" it; holding that one holds the producer, so nothing more is sent.)
PRELUDE = """
import contextvars, json, os, threading
import bulk.checkpoint as _cp
import bulk.pipeline as _pl
_marker, _seen = os.environ["HOLD_COMMIT_MARKER"], {}
_periodic = contextvars.ContextVar("periodic", default=False)
_checkpointer = _pl.Run._checkpointer
async def _tagged(self):
    _periodic.set(True)
    await _checkpointer(self)
_pl.Run._checkpointer = _tagged
class _Held:
    def __init__(self, db):
        self._db = db
    def __getattr__(self, name):
        return getattr(self._db, name)
    def execute(self, sql, *args):
        if sql.startswith("INSERT OR REPLACE INTO meta"):
            reserved = json.loads(args[0][0])["reserved"]
            _seen["hold"] = _periodic.get() and reserved > 0 and reserved == _seen.get("last")
            _seen["last"] = reserved
        if sql == "COMMIT" and _seen.pop("hold", False):
            with open(_marker + ".tmp", "w") as f:
                f.write(threading.current_thread().name)
            os.replace(_marker + ".tmp", _marker)
            threading.Event().wait()  # until the test kills the process
        return self._db.execute(sql, *args)
_init = _cp.StateStore.__init__
def _holding_init(self, *a, **k):
    _init(self, *a, **k)
    name = "_wdb" if hasattr(self, "_wdb") else "_db"
    setattr(self, name, _Held(getattr(self, name)))
_cp.StateStore.__init__ = _holding_init
"""


def _start_with(prelude: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    boot = "\n".join(["import runpy, sys", prelude, "sys.argv = ['bulk', *sys.argv[1:]]",
                      "runpy.run_module('bulk', run_name='__main__', alter_sys=True)"])
    return subprocess.Popen([sys.executable, "-B", "-c", boot, *args], env=client_env(env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO)


@pytest.mark.parametrize("target", TARGETS)
def test_sigkill_while_a_checkpoint_commits_in_its_thread_then_resume(target: str, tmp_path: Path) -> None:
    src, out, marker = tmp_path / "in.ndjson", tmp_path / "run", tmp_path / "held"
    records = write_input(src, 400, seed=900 + TARGETS.index(target))
    with SandboxServer(target, latency_ms=20, seed=900) as sb:
        # The window covers the input: one write-ahead checkpoint (line 1, before any record is
        # sent); the periodic one after it is held, mid-run.
        # --rate 50: the run lasts ~8 s at one request an invoice (anny's ~8 requests an invoice: ~60 s), so
        # the count read once the marker shows is far from the end however late this (loaded)
        # test process looks (the last --rate given wins).
        args = upload_args(sb, src, out, "--concurrency", str(CONCURRENCY), "--checkpoint-every", "0.05",
                           "--rate", "50")
        proc = _start_with(PRELUDE, args, {**sb.env, "HOLD_COMMIT_MARKER": str(marker)})
        try:
            wait_until(lambda: proc.poll() is not None or marker.exists(), timeout=60, interval=0.005,
                       what="a periodic commit")
            assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before a periodic commit"
            assert marker.read_text() != "MainThread", "the checkpoint's commit ran on the event loop's thread"
            at_hold = created_count(sb)
            # More than could have been in flight when the commit began: the loop goes on meanwhile.
            wait_until(lambda: proc.poll() is not None or created_count(sb) > at_hold + 2 * CONCURRENCY,
                       timeout=60, interval=0.005, what="uploads while the commit is held")
            assert proc.poll() is None, f"the run ended (exit {proc.returncode}) while its commit was held"
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=30)
        finally:
            stop(proc)
        assert proc.returncode == -signal.SIGKILL
        resume_to_the_end(sb, args, out, records)  # the plain CLI: no duplicate at the API, none lost
    assert_counts(out, records)
    assert_outputs_whole(out)
