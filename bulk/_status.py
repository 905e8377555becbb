"""The progress line's view of a run: :func:`status` reads it, :func:`tick` hands it to the sink.

Read-only: the watermark (:class:`bulk.watermark.Tracker`, what is finished and what is read),
the input's estimated size, and the pacer's state (failing since when, giving up when, the
last error, redacted here on its way out). Four times a second, for the CLI's progress line.
"""

from __future__ import annotations

import anyio

from ._jobstate import JobState
from .config import UploadConfig
from .progress import ProgressSink, Status
from .source import InputFile

__all__ = ["status", "tick"]


async def tick(progress: ProgressSink, job: JobState, input: InputFile, config: UploadConfig) -> None:
    """Update ``progress`` every 0.25 s until cancelled."""
    while True:
        progress.update(job.tally, job.traffic(), status(job, input, config))
        await anyio.sleep(0.25)


def status(job: JobState, input: InputFile, config: UploadConfig) -> Status:
    session = job.session
    pacer = session.pacer if session else None
    shard = config.shard
    tracker = job.tracker
    read_bytes, read_line = tracker.read
    return Status(done_bytes=tracker.offset, done_lines=tracker.line - 1,
                  read_bytes=read_bytes, read_lines=read_line - 1,
                  total_bytes=input.estimated_size(), share=1 / shard.count if shard else 1.0,
                  failing_since=pacer.failing_since if pacer else None,
                  give_up_at=pacer.last_ok + config.give_up_after if pacer else None,
                  # the API's words may quote a credential: redacted here, on their way out
                  last_error=session.transport.redact(pacer.last_error) if session and pacer else "")
