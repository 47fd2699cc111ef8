"""`make smoke-gpu`: without CUDA it says so and exits 0; its measurements run (at toy size, on
the CPU) and write the report, so the script is checked where no GPU is at hand."""

from __future__ import annotations

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
    for row in ("IR pretraining, ResNet-50, JPEG files through the loader", "LA pretraining, ResNet-50",
                "floor: forward/backward/SGD", "peak GPU memory", "faiss k-means", "LA objective + bank update",
                "Detectron2 Faster R-CNN R50-C4"):
        assert row in text, row
