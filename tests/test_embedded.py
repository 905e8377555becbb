"""The embedded sandbox's seed (bulk/embedded.py seeded_options, bulk/sandbox/seed_from.py
references): the input is read in a daemon thread, so the event loop (its signal handling:
a Ctrl-C) goes on meanwhile, and a cancel stops the reading before the end of the file."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import anyio
import pytest

from bulk.config import UploadConfig
from bulk.embedded import seeded_options
from bulk.errors import ConfigError
from bulk.sandbox.seed_from import CHUNK, References, references
from bulk.targets import get_target

LINE = b'{"customer": {"external_id": "C-1"}, "currency": "eur", "lines": [{"item_ref": "SKU-1"}]}\n'


def test_the_loop_goes_on_while_the_input_is_read_and_a_cancel_stops_the_reading(tmp_path: Path) -> None:
    # The input is a FIFO its writer holds open: the reading cannot end before the writer lets it.
    fifo = tmp_path / "export.ndjson"
    os.mkfifo(fifo)
    read_some, release = threading.Event(), threading.Event()
    ended: list[str] = []

    def writer() -> None:
        fd = os.open(fifo, os.O_WRONLY)  # until the reader opened it
        try:
            os.write(fd, LINE * CHUNK)  # ~370 KB, beyond the pipe's 64 KiB: returns once mostly read
            read_some.set()
            release.wait(30)
            for _ in range(1_000):  # ~16 chunks more: the reader stops at its next look
                os.write(fd, LINE * 64)
        except BrokenPipeError:
            ended.append("the reader closed the file")
        else:
            ended.append("written to the end")
        finally:
            os.close(fd)

    async def main() -> list[References]:
        got: list[References] = []

        async def read() -> None:
            got.append(await references(str(fifo)))

        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(read)
                # the loop runs while the reader's thread reads (and then waits for more)
                assert await anyio.to_thread.run_sync(read_some.wait, 30)
                assert not got  # the writer holds the file open: no end yet
                scope.cancel()  # as a SIGINT's handler does: the await returns at once
        return got

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        got = anyio.run(main)
        assert got == [] and not release.is_set() and thread.is_alive()  # cancelled before the end
    finally:
        release.set()
        thread.join(30)
    assert ended == ["the reader closed the file"]  # the thread stopped reading too


def config(tmp_path: Path, src: Path, target: str) -> UploadConfig:
    return UploadConfig(input=str(src), out=tmp_path / "run", target=target)


@pytest.mark.parametrize("create", [None, frozenset({"items"})])
def test_seeded_options_hold_what_the_input_references_less_what_the_run_creates(
        tmp_path: Path, create: frozenset[str] | None) -> None:
    src = tmp_path / "in.ndjson"
    src.write_bytes(LINE * (2 * CHUNK + 1))
    options = anyio.run(seeded_options, get_target("chargeover"), config(tmp_path, src, "chargeover"), create)
    assert options["seed_items"] == ([] if create else ["SKU-1"])
    assert options["seed_currencies"] == ["EUR"]
    assert "USD" in options["currencies"]  # the pairing's own options are kept


def test_seeded_options_read_nothing_for_an_unseeded_dialect_or_a_restored_sandbox(tmp_path: Path) -> None:
    missing = tmp_path / "no such file.ndjson"
    assert anyio.run(seeded_options, get_target("agiled"), config(tmp_path, missing, "agiled"), None) == {}
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "sandbox.db").write_bytes(b"")
    options = anyio.run(seeded_options, get_target("chargeover"), config(tmp_path, missing, "chargeover"), None)
    assert "seed_items" not in options
    (tmp_path / "run" / "sandbox.db").unlink()
    with pytest.raises(ConfigError, match=r"cannot read .*no such file"):
        anyio.run(seeded_options, get_target("chargeover"), config(tmp_path, missing, "chargeover"), None)


def test_a_ctrl_c_while_the_seed_reads_a_stalled_input_ends_the_command(tmp_path: Path) -> None:
    # `bulk upload FIFO` with the embedded Coperniq sandbox (a seeded dialect): the seed's reader
    # waits for lines the writer never sends. A SIGINT then ends the command at once, its reading
    # thread with it (a worker thread that is not a daemon kept the process alive for good).
    import signal

    from harness import signalled, start_cli

    fifo = tmp_path / "export.ndjson"
    os.mkfifo(fifo)
    proc = start_cli(["upload", str(fifo), "--target", "coperniq", "--out", str(tmp_path / "run"), "--quiet"], {})
    fd = os.open(fifo, os.O_WRONLY)  # returns once the command opened the input
    try:
        os.write(fd, LINE * CHUNK)  # beyond the pipe's 64 KiB: returns once the reader has read most of it
        err = signalled(proc, signal.SIGINT, "it should end while its input is still open")
        assert proc.returncode == 130, err
        assert "interrupted: run the same command again to resume" in err
        assert not (tmp_path / "run" / "sandbox.db").exists()  # nothing started
    finally:
        os.close(fd)
