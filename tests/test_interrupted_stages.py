"""A stage command stopped by SIGTERM (a preemption, `kill`, the SIGTERM SLURM sends before
killing a job) and run again ends with the bytes of a run never stopped: the pretraining stages
from their checkpoint, a transfer cell by starting over (it writes nothing until its record)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from .conftest import make_arrays_dataset

REPO = Path(__file__).resolve().parent.parent
TINY = {"epochs": 4, "batch_size": 4, "knn_k": 5}
MODEL_OF = {"pretrain-la": "la", "supervised": "supervised"}


def _env() -> dict:
    return {**os.environ, "LOCALAGG_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}


def _workdir(root: Path) -> Path:
    root.mkdir()
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for stage in ("pretrain_ia", "pretrain_la", "supervised"):
        params[stage].update(TINY)
    params["pretrain_la"].update(k=8, num_clusters=4, num_kmeans=2, lr_drops=[])
    params["supervised"].update(lr_drops=[], knn_every_epochs=1)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    make_arrays_dataset(root / "data/prepared/object")
    return root


def _run(root: Path, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "stages", *args], cwd=root, env=_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc


def _stop_after(root: Path, pattern: str, *args: str) -> tuple[int, str]:
    """Start the command, SIGTERM it once a line matches `pattern`; (exit code, its output)."""
    proc = subprocess.Popen([sys.executable, "-m", "stages", *args], cwd=root, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines, deadline = [], time.monotonic() + 300
    for line in proc.stdout:
        lines.append(line)
        if re.search(pattern, line):
            proc.send_signal(signal.SIGTERM)
            break
        assert time.monotonic() < deadline
    rest, _ = proc.communicate(timeout=300)
    return proc.returncode, "".join(lines) + rest


@pytest.mark.slow
@pytest.mark.parametrize("command", ["pretrain-la", "supervised"])
def test_sigterm_then_rerun_ends_with_the_model_of_a_run_never_stopped(command, tmp_path):
    clean, cut = _workdir(tmp_path / "clean"), _workdir(tmp_path / "cut")
    if command == "pretrain-la":  # LA starts from the IR model: the same one in both
        _run(clean, "pretrain-ia")
        (cut / "models").mkdir()
        shutil.copy(clean / "models/ir.pt", cut / "models/ir.pt")
    _run(clean, command)
    name = MODEL_OF[command]
    code, text = _stop_after(cut, r" epoch 1/4", command)
    assert code == 128 + signal.SIGTERM, text
    assert re.search(r"stopped by SIGTERM at epoch \d, step \d of 8; checkpoint saved", text), text
    assert not (cut / f"models/{name}.pt").exists() and not (cut / f"metrics/{command.replace('-', '_')}.json").exists()
    again = _run(cut, command)
    assert "resuming at epoch" in again.stderr, again.stderr
    assert (cut / f"models/{name}.pt").read_bytes() == (clean / f"models/{name}.pt").read_bytes()
    history = [json.loads((d / f"records/{command.replace('-', '_')}.json").read_text())["history"] for d in (clean, cut)]
    assert [h["loss"] for h in history[0]] == [h["loss"] for h in history[1]]
