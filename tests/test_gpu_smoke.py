"""`make smoke-gpu`: without CUDA it says so and exits 0; its measurements run (at toy size, on
the CPU) and write the report, so the script is checked where no GPU is at hand."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent


def test_without_cuda_it_says_so_and_exits_0(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_smoke"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0 and "no CUDA device" in proc.stdout


@pytest.mark.slow
def test_every_measurement_runs_and_is_reported(tmp_path):
    out = tmp_path / "gpu-smoke.md"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_smoke", "--cpu-dry-run", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    text = out.read_text()
    for row in ("IR pretraining, ResNet-50, 1 process", "`localagg pretrain-la` on 2 process(es) under torchrun, "
                "SyncBN on", "floor: forward/backward/SGD", "k-means (torch, sharded), 2,000 x 128 into 20",
                "LA objective + bank update", "kNN monitor, 500 queries x 5,000 bank rows",
                "linear readout, paper pooling, 5 layers, 10 crops", "Detectron2 Faster R-CNN R50-C4"):
        assert row in text, row
    figures = json.loads(out.with_suffix(".json").read_text())  # what `localagg plan` reads
    assert figures["world_size"] == 2 and figures["train_img_per_s_per_gpu"] > 0
