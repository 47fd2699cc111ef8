"""A piped log of a run reads well: a progress line at least once a minute inside an epoch (a
fake clock here, no sleeping), LA's clustering on its epoch line, each stage's last line names
what it wrote, and metrics files hold numbers at the precision they carry."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
import torch
import yaml

from localagg import progress
from localagg.progress import HEARTBEAT_SECONDS, Heartbeat

from .conftest import make_arrays_dataset
from .test_pretrain import AUG, MODEL, ir_cfg, la_cfg, make_trainer

REPO = Path(__file__).resolve().parent.parent


class FakeClock:
    """Advances `step` seconds at every reading (each heartbeat reads its clock once a step)."""

    def __init__(self, step: float):
        self.step, self.t = step, 1000.0

    def __call__(self) -> float:
        self.t += self.step
        return self.t


def _lines(caplog, pattern: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if re.search(pattern, r.getMessage())]


# ---------------------------------------------------------------------------------- heartbeat


def test_heartbeat_is_due_after_a_minute_without_a_line_whatever_the_period():
    slow = Heartbeat(now=FakeClock(HEARTBEAT_SECONDS + 1))
    assert [slow.due() for _ in range(5)] == [True] * 5
    fast = Heartbeat(now=FakeClock(1.0))
    assert [fast.due() for _ in range(10)] == [False] * 10
    assert fast.due(periodic=True)  # the loop's own period still prints
    # a line printed anyway (the periodic one, the epoch line) restarts the minute
    clock = FakeClock(20.0)
    beat = Heartbeat(now=clock)  # t0
    assert not beat.due() and not beat.due(periodic=False)  # t0 + 20, + 40
    beat.printed()  # t0 + 60: counts as a line
    assert [beat.due() for _ in range(3)] == [False, False, True]  # + 20, + 40, + 60 after the line
    off = Heartbeat(enabled=False, now=FakeClock(1000.0))  # a bar is shown, or not rank 0
    assert not off.due() and off.due(periodic=True)


@pytest.mark.parametrize("seconds_per_step,lines", [(HEARTBEAT_SECONDS + 1, [1, 2, 3, 4]), (1.0, [])],
                         ids=["61s-a-step", "1s-a-step"])
def test_pretraining_logs_a_step_line_whenever_a_minute_passed(seconds_per_step, lines, tiny_data, tmp_path,
                                                               monkeypatch, caplog):
    """4 steps an epoch (under 200: no step-based line): a step that takes 61 s logs a line, a
    short epoch of 1 s steps logs only its epoch line."""
    monkeypatch.setattr(progress, "clock", FakeClock(seconds_per_step))
    caplog.set_level(logging.INFO, logger="localagg")
    make_trainer(ir_cfg(epochs=1), MODEL, AUG, tiny_data, tmp_path / "ck").run()
    found = _lines(caplog, r"^ir epoch 1/1, step ")
    assert [int(re.search(r"step (\d+)/4:", line).group(1)) for line in found] == lines, found
    for line in found:
        assert re.fullmatch(r"ir epoch 1/1, step \d/4: loss [\d.]+, lr [\d.e-]+, [\d,]+ img/s, elapsed \S+, ETA \S+",
                            line), line
    assert len(_lines(caplog, r"^ir epoch 1/1: loss")) == 1


def test_the_step_lines_loss_is_the_running_mean_of_the_epoch_across_checkpoints(tiny_data, tmp_path, monkeypatch,
                                                                                 caplog):
    """A checkpoint every step empties the loop's loss accumulator: the line's loss is still
    the mean of the epoch's steps so far (the last step's line is the epoch's mean loss)."""
    monkeypatch.setattr(progress, "clock", FakeClock(HEARTBEAT_SECONDS + 1))
    caplog.set_level(logging.INFO, logger="localagg")
    trainer = make_trainer(ir_cfg(epochs=1, checkpoint_every_steps=1), MODEL, AUG, tiny_data, tmp_path / "ck")
    trainer.run()
    last = _lines(caplog, r"^ir epoch 1/1, step 4/4: ")[0]
    assert float(re.search(r"loss ([\d.]+)", last).group(1)) == pytest.approx(trainer.state.history[0]["loss"],
                                                                            abs=1e-4)


def test_the_readout_logs_a_step_line_whenever_a_minute_passed(monkeypatch, caplog):
    from localagg.evaluation.linear import train_linear_readout

    from .test_linear_readout import SPEC, config, intensity_classes, tiny_model

    caplog.set_level(logging.INFO, logger="localagg")
    cfg = config(epochs=2, layers=["conv1", "conv5"])  # 32 images of batch 16: 2 steps an epoch
    for seconds, expected in ((HEARTBEAT_SECONDS + 1, 4), (1.0, 0)):
        caplog.clear()
        monkeypatch.setattr(progress, "clock", FakeClock(seconds))
        train_linear_readout(tiny_model(), intensity_classes(32), intensity_classes(8, seed=1), 4, cfg, SPEC)
        found = _lines(caplog, r"^readout seed 0 epoch \d/2, step ")
        assert len(found) == expected, found
        for line in found:
            assert re.fullmatch(r"readout seed 0 epoch \d/2, step \d/2: loss_conv1 [\d.]+, loss_conv5 [\d.]+, "
                                r"lr [\d.e-]+, [\d,]+ img/s, elapsed \S+, ETA \S+", line), line


# ---------------------------------------------------------------------------------- LA's epoch line


def test_las_epoch_line_has_its_clustering_statistics(tiny_data, tmp_path, caplog):
    ir = make_trainer(ir_cfg(epochs=1), MODEL, AUG, tiny_data, tmp_path / "ck_ir")
    ir.run()
    ir.export(tmp_path / "ir.pt")
    caplog.set_level(logging.INFO, logger="localagg")
    la = make_trainer(la_cfg(epochs=1), MODEL, AUG, tiny_data, tmp_path / "ck_la", val_dir=tiny_data,
                      init_from=tmp_path / "ir.pt")
    row = la.run().history[0]
    (line,) = _lines(caplog, r"^la epoch 1/1: ")
    stats = (f", NMI {row['cluster_nmi']:.3f}, purity {100 * row['cluster_purity']:.1f}%, "
             f"k-means {row['kmeans_seconds']:.2f} s, epoch ")
    assert stats in line and f"kNN {row['knn_top1']:.2f}%" in line, line
    assert "NMI" not in ir.method.epoch_text({"loss": 1.0})  # IR has no clustering


# ---------------------------------------------------------------------------------- stage outputs


def _params(root: Path, mutate) -> Path:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    mutate(params)
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def _decimals(value: float) -> int:
    text = repr(value)
    return len(text.split(".")[1]) if "." in text else 0


def test_pretraining_names_what_it_wrote_and_rounds_its_metrics(tmp_path, monkeypatch, caplog):
    from stages import pretrain

    monkeypatch.chdir(tmp_path)
    make_arrays_dataset(Path("data/prepared/object"))

    def tiny(p):
        p["model"].update(embedding_dim=16)
        p["augment"].update(crop_size=16)
        p["pretrain_ia"].update(epochs=1, batch_size=8, knn_k=5, num_negatives=16, num_processes=1)
    params = _params(tmp_path, tiny)
    caplog.set_level(logging.INFO, logger="stages")
    summary = pretrain.run("pretrain_ia", params)
    assert _lines(caplog, r"^pretrain_ia: wrote") == [
        "pretrain_ia: wrote models/ir.pt, records/pretrain_ia.json and metrics/pretrain_ia.json"]
    assert all(Path(p).is_file() for p in ("models/ir.pt", "records/pretrain_ia.json", "metrics/pretrain_ia.json"))
    metrics = json.loads(Path("metrics/pretrain_ia.json").read_text())
    record = json.loads(Path("records/pretrain_ia.json").read_text())
    assert record["final_loss"] == summary["final_loss"]  # the record keeps every digit
    assert metrics["loss"] == round(summary["final_loss"], 4) and _decimals(metrics["loss"]) <= 4
    assert metrics["knn_top1"] == round(summary["final_knn_top1"], 2)


def test_a_transfer_cell_names_what_it_wrote(tmp_path, monkeypatch, caplog):
    from localagg.models.backbone import EmbeddingNet
    from localagg.runtime.checkpoint import save_export
    from stages import transfer

    monkeypatch.chdir(tmp_path)

    def tiny(p):
        p["model"].update(arch="resnet18", stem="imagenet", embedding_dim=8)
        p["augment"].update(crop_size=16, mean=[0.5] * 3, std=[0.25] * 3)
        p["transfer"].update(seeds=[0], num_processes=1, knn={"k": 5, "temperature": 0.07, "pixel_size": 16})
        p["transfer"]["object"].update(epochs=1, batch_size=8, lr_drops=[], crop_size=16, eval_resize=16,
                                       device="cpu", layers=["conv1", "conv5"])
    params = _params(tmp_path, tiny)
    make_arrays_dataset(Path("data/prepared/object"), n_train=24, n_val=8)
    torch.manual_seed(0)
    save_export("models/random.pt", EmbeddingNet("resnet18", "imagenet", 8), "random")
    caplog.set_level(logging.INFO, logger="stages")
    record = transfer.run("random", "object", params)
    assert _lines(caplog, r"^transfer random-object: wrote") == [
        "transfer random-object: wrote records/transfer/random-object.json and metrics/transfer/random-object.json"]
    metrics = json.loads(Path("metrics/transfer/random-object.json").read_text())
    assert metrics == transfer.headline(record["runs"], record["knn"])
    assert all(_decimals(v) <= 2 for v in metrics.values()), metrics


def test_metrics_files_round_by_key_and_records_keep_every_digit(tmp_path, monkeypatch):
    from stages.common import decimals, rounded, write_results

    assert [decimals(k) for k in ("AP50", "best_top1", "knn_top1", "loss", "final_loss", "cluster_nmi")] == [
        2, 2, 2, 4, 4, 4]
    headline = {"AP50": 2.799011474519786, "loss": 1.668234567, "cluster_nmi": 0.39263311, "n": 7, "none": None,
                "per": {"top1": 12.3456}}
    assert rounded(headline) == {"AP50": 2.8, "loss": 1.6682, "cluster_nmi": 0.3926, "n": 7, "none": None,
                                 "per": {"top1": 12.35}}
    monkeypatch.chdir(tmp_path)
    written = write_results(Path("metrics/x.json"), {"AP50": headline["AP50"]}, {"AP50": headline["AP50"]})
    assert written == [Path("records/x.json"), Path("metrics/x.json")]
    assert json.loads(Path("metrics/x.json").read_text()) == {"AP50": 2.8}
    assert json.loads(Path("records/x.json").read_text())["AP50"] == 2.799011474519786
