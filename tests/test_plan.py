"""`localagg plan`: the paper preset fits an 8 x 80 GB node with 512 GB and gets a finite
time for every stage; what does not fit is named; measured throughputs replace assumptions."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from stages.plan import GIB, Machine, plan, render

REPO = Path(__file__).resolve().parent.parent
PAPER = REPO / "stages/presets/paper-resnet50.yaml"
NODE = Machine(gpus=8, gpu_bytes=80 * 10**9, host_bytes=512 * 10**9, disk_bytes=4 * 10**12, cores=64)


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """A working directory with no records: every time comes from the stated assumptions."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_paper_preset_fits_a_node_of_8_gpus_and_gets_a_finite_time_for_every_stage(elsewhere):
    costs, problems = plan(PAPER, NODE)
    assert problems == []
    stages = [c.stage for c in costs]
    assert stages[:5] == ["prepare", "pretrain_ia", "pretrain_la", "supervised", "random_init"]
    assert sum(s.startswith("transfer ") for s in stages) == 10 and stages[-1] == "report"
    for c in costs:
        assert math.isfinite(c.seconds) and c.seconds >= 0 and c.basis, c
    la = next(c for c in costs if c.stage == "pretrain_la")
    assert la.items == 1_281_167 * 200 - 1_281_167 * 10  # LA's 190 epochs
    assert 0 < la.gpu_bytes < 80 * 10**9 and la.basis.startswith("assumed")
    # the bank (N x 128 float32) and H = 10 label rows (int64) are in every rank's memory
    assert la.gpu_bytes > 1_281_167 * 128 * 4 + 10 * 1_281_167 * 8
    text = render(costs, problems, NODE)
    assert "| pretrain_la | 243,421,730 |" in text and "Nothing here would not fit." in text


def test_what_does_not_fit_is_named_with_the_key_to_change(elsewhere, tmp_path):
    import yaml

    small = Machine(gpus=1, gpu_bytes=2 * GIB, host_bytes=16 * GIB, disk_bytes=10**12, cores=4)
    _, problems = plan(PAPER, small)
    assert any(p.startswith("pretrain_la: needs") and "lower its batch_size" in p for p in problems), problems
    assert any("host memory" in p for p in problems)
    # the readout cache of the paper's ImageNet cell: 1.3M images x 351,232 features, as `check` refuses
    p = yaml.safe_load(PAPER.read_text())
    p["transfer"]["object"].update(cache_features=True, train_augment="none", ten_crop=False)
    (tmp_path / "cached.yaml").write_text(yaml.safe_dump(p))
    costs, problems = plan(tmp_path / "cached.yaml", NODE)
    cell = next(c for c in costs if c.stage == "transfer la-object")
    assert cell.host_bytes > (1_281_167 + 50_000) * 351_232 * 4
    assert any(p.startswith("transfer la-object: needs") for p in problems)


def test_a_previous_runs_record_replaces_the_assumed_throughput(elsewhere):
    """The embedded default's pretraining record (2 processes of ResNet-18 at 40 px, 500 img/s)
    sets the CPU rate: the plan's time follows it."""
    params = REPO / "params.yaml"
    cpu = Machine(gpus=0, gpu_bytes=0, host_bytes=64 * GIB, disk_bytes=10**12, cores=2)
    before = {c.stage: c for c in plan(params, cpu)[0]}
    os.makedirs("records")
    provenance = [{"arch": "resnet18", "stem": "imagenet", "embedding_dim": 128, "world_size": 1,
                   "augment": {"crop_size": 40}}]
    for rate in (500.0, 1000.0):
        Path("records/pretrain_ia.json").write_text(json.dumps({"final_img_per_s": rate, "provenance": provenance,
                                                                "cost": {"peak_gpu_mb": None}}))
        after = {c.stage: c for c in plan(params, cpu)[0]}
        assert after["pretrain_la"].basis == "measured: records/pretrain_ia.json"
        if rate == 500.0:
            first = after["pretrain_ia"].seconds
    assert after["pretrain_ia"].seconds == pytest.approx(first / 2, rel=0.05)  # twice the rate, about half the time
    assert before["pretrain_ia"].basis.startswith("assumed")


@pytest.mark.parametrize("preset", ["paper-alexnet", "paper-vgg16", "paper-resnet18"])
def test_every_papers_network_gets_a_plan_and_alexnet_and_vgg16_no_detection(elsewhere, preset):
    """The probes run each network on the meta device (AlexNet's and VGG16's fc6/fc7 batch norms
    need two images); the presets without a C4 detector plan no detection stage."""
    costs, problems = plan(REPO / f"stages/presets/{preset}.yaml", NODE)
    assert problems == []
    stages = [c.stage for c in costs]
    assert any(s.startswith("detection ") for s in stages) == (preset == "paper-resnet18")
    la = next(c for c in costs if c.stage == "pretrain_la")
    assert 0 < la.gpu_bytes < 80 * 10**9 and math.isfinite(la.seconds)
