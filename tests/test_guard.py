"""A stage run by DVC stops when the `dvc` process that started it is gone, even with a shell
between them, instead of writing on as an orphan; run by hand, it is not watched."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from .conftest import make_arrays_dataset

REPO = Path(__file__).resolve().parent.parent

# Stands in for `dvc`: starts the stage through a shell that does not exec it (as `sh -c "cmd; ..."`),
# prints the shell's PID, then waits for ever.
PARENT = """
import subprocess, sys, time
shell = subprocess.Popen(["bash", "-c", sys.argv[1] + "; true"], env=None)
print(shell.pid, flush=True)
time.sleep(3600)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _stage_pid(workdir: Path, deadline: float) -> int:
    lock = workdir / ".locks" / "pretrain_ia.lock"
    while time.monotonic() < deadline:
        if lock.is_file() and lock.read_text().strip():
            return int(lock.read_text())
        time.sleep(0.05)
    raise AssertionError("the stage did not start")


@pytest.fixture
def workdir(tmp_path):
    make_arrays_dataset(tmp_path / "data" / "prepared" / "object")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["pretrain_ia"].update(epochs=100000, batch_size=8, knn_k=5, num_negatives=4)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return tmp_path


@pytest.mark.slow
def test_a_stage_stops_when_the_dvc_process_that_started_it_is_killed(workdir):
    cmd = f"{sys.executable} -m stages pretrain-ia --params params.yaml"
    env = {**os.environ, "DVC_STAGE": "pretrain_ia", "LOCALAGG_NO_PROGRESS": "1"}
    parent = subprocess.Popen([sys.executable, "-c", PARENT, cmd], cwd=workdir, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    shell = int(parent.stdout.readline())
    stage = _stage_pid(workdir, time.monotonic() + 120)
    assert _alive(stage)
    parent.send_signal(signal.SIGKILL)  # `kill -9 dvc`: the shell between them lives on
    parent.wait()
    deadline = time.monotonic() + 30
    while _alive(stage) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(stage), "the stage kept running after its dvc process was killed"
    os.kill(shell, signal.SIGKILL) if _alive(shell) else None


@pytest.mark.slow
def test_a_stage_run_by_hand_is_not_stopped_by_its_parent_exiting(workdir):
    cmd = f"{sys.executable} -m stages pretrain-ia --params params.yaml"
    env = {k: v for k, v in os.environ.items() if k != "DVC_STAGE"}
    env["LOCALAGG_NO_PROGRESS"] = "1"
    parent = subprocess.Popen([sys.executable, "-c", PARENT, cmd], cwd=workdir, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    parent.stdout.readline()
    stage = _stage_pid(workdir, time.monotonic() + 120)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    time.sleep(3)
    try:
        assert _alive(stage), "a stage started by hand (e.g. under nohup) must outlive its parent"
    finally:
        os.kill(stage, signal.SIGKILL)
