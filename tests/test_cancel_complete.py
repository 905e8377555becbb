"""A run its caller cancels (a library user's timeout or task group) is not complete.

``Run.execute``'s final checkpoint is shielded, so it is written whatever cancels the run; it
must then say what is true: the run stopped early, and ``bulk merge`` and a resumed run trust
``complete``. Before the fix a cancelled run was committed ``complete: true`` with records unread.
The cancel comes on progress (invoices seen at the server), never on a clock.
"""

from __future__ import annotations

import json
from pathlib import Path

import anyio
from harness import SandboxServer, created_count, resume_to_the_end, upload_args, write_input

from bulk import run_upload
from bulk._cli.settings import upload_config
from bulk.checkpoint import load_checkpoint
from bulk.cli import build_parser

RECORDS = 300


def test_a_run_cancelled_by_its_caller_is_not_complete_and_resumes_exactly(tmp_path: Path) -> None:
    src, out = tmp_path / "in.ndjson", tmp_path / "run"
    records = write_input(src, RECORDS)
    with SandboxServer("agiled", latency_ms=5) as sb:
        args = upload_args(sb, src, out, "--rate", "200")
        config = upload_config(build_parser().parse_args(args), sb.base_url)

        async def main() -> None:
            async with anyio.create_task_group() as tg:
                async def upload() -> None:
                    await run_upload(config, env=sb.env)
                    tg.cancel_scope.cancel()

                tg.start_soon(upload)
                # the caller gives up once the run is under way (some invoices at the server)
                while await anyio.to_thread.run_sync(created_count, sb) < 10:  # noqa: ASYNC110 (a server's count: no event to wait on)
                    await anyio.sleep(0.01)
                tg.cancel_scope.cancel()

        anyio.run(main)
        cp = load_checkpoint(out)
        assert cp is not None
        assert cp.tally["read"] < RECORDS, "the run finished before its caller cancelled it: the test proves nothing"
        assert cp.complete is False, cp.tally
        assert json.loads((out / "summary.json").read_text())["complete"] is False
        resume_to_the_end(sb, args, out, records)  # the same command finishes it, exactly once
