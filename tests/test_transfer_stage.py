"""The `transfer` stage as a command: one cell with `transfer.num_processes: 2` relaunches
itself under torchrun (gloo) and records what one process records."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from localagg.models.backbone import EmbeddingNet
from localagg.runtime.checkpoint import save_export

from .conftest import make_arrays_dataset

REPO = Path(__file__).resolve().parent.parent


def _workdir(root: Path, processes: int) -> Path:
    root.mkdir()
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["model"].update(arch="resnet18", stem="imagenet", embedding_dim=8)
    params["augment"].update(crop_size=16, mean=[0.5] * 3, std=[0.25] * 3)
    readout = dict(epochs=2, batch_size=8, lr_drops=[], crop_size=16, eval_resize=16, float64=True, device="cpu")
    params["transfer"].update(seeds=[0, 1], num_processes=processes, knn={"k": 5, "temperature": 0.07, "pixel_size": 16})
    params["transfer"]["object"].update(readout)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    make_arrays_dataset(root / "data/prepared/object", n_train=30, n_val=10)
    torch.manual_seed(0)
    save_export(root / "models/random.pt", EmbeddingNet("resnet18", "imagenet", 8), "random")
    return root


def _run_cell(root: Path) -> dict:
    subprocess.run([sys.executable, "-m", "stages", "transfer", "-m", "random", "-d", "object"], cwd=root,
                   check=True, capture_output=True, text=True, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    return json.loads((root / "records/transfer/random-object.json").read_text())


@pytest.mark.slow
def test_a_transfer_cell_on_two_processes_records_what_one_process_records(tmp_path):
    one, two = _run_cell(_workdir(tmp_path / "one", 1)), _run_cell(_workdir(tmp_path / "two", 2))
    assert (one["protocol"]["world_size"], two["protocol"]["world_size"]) == (1, 2)
    def without_losses(runs):
        return [{k: v for k, v in run.items() if k != "losses"} for run in runs]

    assert without_losses(two["runs"]) == without_losses(one["runs"])  # accuracies per layer, seed and class
    for a, b in zip(two["runs"], one["runs"]):  # the losses: float64 sums in another order
        assert a["losses"].keys() == b["losses"].keys()
        assert all(x == pytest.approx(y, rel=1e-8, abs=1e-12) for k in a["losses"]
                   for x, y in zip(a["losses"][k], b["losses"][k]))
    assert two["knn"] == one["knn"]
    assert two["views"]["retrieval"] == one["views"]["retrieval"]
    assert one["protocol"]["readout"]["amp"] == "off"
    histories = [(tmp_path / d / "dvclive/transfer/random-object/seed0/plots/metrics/loss_conv5.tsv").read_text()
                 for d in ("one", "two")]
    rows = [[float(line.split("\t")[1]) for line in h.splitlines()[1:]] for h in histories]
    assert rows[1] == pytest.approx(rows[0], rel=1e-8)
    # what ran beyond params: float results depend on the CPU kernels and the thread count
    env = one["environment"]
    assert env["torch_threads"] >= 1 and env["cpu_capability"] and env["torch"] and "git_commit" in env
    # each run records its layers' first and last training losses (the report flags one that grew)
    assert set(one["runs"][0]["losses"]) == set(one["runs"][0]["linear"]) and all(
        len(pair) == 2 for pair in one["runs"][0]["losses"].values())


@pytest.mark.slow
def test_a_transfer_cell_stopped_by_sigterm_writes_nothing_and_its_rerun_records_what_a_clean_run_records(tmp_path):
    import os
    import signal
    import time

    clean = _run_cell(_workdir(tmp_path / "clean", 1))
    root = _workdir(tmp_path / "cut", 1)
    proc = subprocess.Popen([sys.executable, "-m", "stages", "transfer", "-m", "random", "-d", "object"], cwd=root,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    started = root / "dvclive/transfer/random-object/seed0"
    deadline = time.monotonic() + 300
    while not started.exists():  # the first readout is training
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert not (root / "records/transfer/random-object.json").exists()
    assert not (root / "metrics/transfer/random-object.json").exists()
    again = _run_cell(root)
    drop = ("cost", "environment")
    assert {k: v for k, v in again.items() if k not in drop} == {k: v for k, v in clean.items() if k not in drop}
