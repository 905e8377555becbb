"""The run directory (bulk/_rundir.py): open_job refuses another job's directory and leaves
nothing of it open."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bulk._rundir import open_job
from bulk.checkpoint import Checkpoint, StateStore
from bulk.config import UploadConfig
from bulk.errors import ConfigError, OutputError
from bulk.source import fingerprint


def open_files(run_dir: Path) -> list[str]:
    """The files of ``run_dir`` this process holds open (Linux: /proc/self/fd)."""
    held = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # the listing's own fd, closed meanwhile
        if target.startswith(str(run_dir.resolve())):
            held.append(target)
    return held


@pytest.mark.parametrize("other", ["input", "target"])
def test_a_directory_of_another_job_is_refused_with_its_state_db_closed(tmp_path: Path, other: str) -> None:
    src = tmp_path / "in.ndjson"
    src.write_text('{"external_id": "INV-1"}\n')
    out = tmp_path / "run"
    out.mkdir()
    store = StateStore(out)
    store.commit(Checkpoint(target="chargeover" if other == "target" else "agiled",
                            input="another file" if other == "input" else fingerprint(str(src))))
    store.close()
    assert open_files(out) == []
    with pytest.raises(ConfigError) as refused:
        open_job(UploadConfig(input=str(src), out=out, target="agiled"), out)
    assert ("different input" if other == "input" else "is a chargeover job") in str(refused.value)
    # While the error (and its traceback, which holds open_job's frame) lives: nothing held.
    assert open_files(out) == []
    assert refused.traceback  # kept alive to here


def test_an_output_that_cannot_be_opened_leaves_the_others_closed(tmp_path: Path) -> None:
    src = tmp_path / "in.ndjson"
    src.write_text('{"external_id": "INV-1"}\n')
    out = tmp_path / "run"
    (out / "created_refs.csv").mkdir(parents=True)  # opened after state.db and the three outputs
    with pytest.raises(OutputError, match=r"created_refs\.csv") as refused:
        open_job(UploadConfig(input=str(src), out=out, target="agiled"), out)
    assert open_files(out) == []
    assert refused.traceback
