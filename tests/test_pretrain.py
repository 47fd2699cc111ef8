"""Pretraining loop: resume equals uninterrupted, DDP equals one process, warm-start checks."""

from __future__ import annotations

import os
import signal

import pytest
import torch
import torch.multiprocessing as mp

from localagg.data.augment import AugmentSpec
from localagg.errors import UserError
from localagg.models.config import ModelConfig
from localagg.runtime import checkpoint as ckpt
from localagg.runtime.distributed import DistInfo
from localagg.training.loop import Trainer, param_groups
from localagg.training.methods.instance_recognition import InstanceRecognition, IRConfig
from localagg.training.methods.local_aggregation import LAConfig, LocalAggregation
from localagg.training.methods.supervised import Supervised, SupervisedConfig

from .conftest import CodeRunningPickle, gloo_worker, init_gloo, make_arrays_dataset, rendezvous

MODEL = ModelConfig(arch="resnet18", stem="small", embedding_dim=16)
AUG = AugmentSpec(crop_size=16, crop_scale=(0.5, 1.0), color_jitter=(0.4, 0.4, 0.0, 0.0), grayscale_p=0.0,
                  mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
COMMON = dict(batch_size=8, lr=0.05, knn_k=5, device="cpu", threads=1)


METHOD_OF = {IRConfig: InstanceRecognition, LAConfig: LocalAggregation, SupervisedConfig: Supervised}


def make_trainer(cfg, *args, **kw) -> Trainer:
    """The loop with the method of `cfg`'s section."""
    return Trainer(METHOD_OF[type(cfg)](cfg), *args, **kw)


def ir_cfg(**kw):
    return IRConfig(**{**COMMON, "epochs": 2, "num_negatives": 16, **kw})


def la_cfg(**kw):
    return LAConfig(**{**COMMON, "epochs": 2, "k": 12, "num_kmeans": 2, "num_clusters": 4, "kmeans_iterations": 5, **kw})


def _same_state(a: dict, b: dict, atol=0.0):
    assert a.keys() == b.keys()
    for k in a:
        if a[k].dtype.is_floating_point:
            torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=f"tensor {k} differs")
        else:
            assert torch.equal(a[k], b[k]), k


def test_lr_schedule_and_weight_decay_groups():
    cfg = ir_cfg(epochs=10, lr_drops=[4, 8])
    assert [cfg.lr_at(e) for e in (0, 3, 4, 7, 8, 9)] == pytest.approx([0.05, 0.05, 0.005, 0.005, 0.0005, 0.0005])
    from localagg.models import build_model

    model = build_model("resnet18", "imagenet", 16)
    decay, no_decay = param_groups(model, 1e-4)
    bn_params = {id(p) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) for p in m.parameters()}
    assert {id(p) for p in no_decay["params"]} == bn_params
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 1e-4
    assert id(model.head.bias) in {id(p) for p in decay["params"]}


def test_ir_then_la_trains_and_exports(tiny_data, tmp_path):
    ir = make_trainer(ir_cfg(), MODEL, AUG, tiny_data, tmp_path / "ck_ir", val_dir=tiny_data)
    res = ir.run()
    assert res.epochs == 2 and len(res.history) == 2
    assert "knn_top1_init" in res.summary and "final_knn_top1" in res.summary
    ir.export(tmp_path / "ir.pt")
    la = make_trainer(la_cfg(), MODEL, AUG, tiny_data, tmp_path / "ck_la", val_dir=tiny_data, init_from=tmp_path / "ir.pt")
    # warm start: LA begins from the IR weights and bank
    exported = ckpt.load(tmp_path / "ir.pt")
    assert torch.equal(la.method.bank.memory, exported["bank"])
    res = la.run()
    assert {"cluster_nmi", "kmeans_seconds"} <= set(res.history[0])
    assert la.method.cluster_labels.shape == (2, 32)


@pytest.mark.parametrize("make_cfg", [ir_cfg, la_cfg], ids=["ir", "la"])
def test_interrupted_then_resumed_equals_uninterrupted(make_cfg, tiny_data, tmp_path):
    cfg = make_cfg(epochs=3, checkpoint_every_steps=1)
    init = None
    if make_cfg is la_cfg:
        ir = make_trainer(ir_cfg(epochs=1), MODEL, AUG, tiny_data, tmp_path / "ck_ir")
        ir.run()
        ir.export(tmp_path / "ir.pt")
        init = tmp_path / "ir.pt"
    full = make_trainer(cfg, MODEL, AUG, tiny_data, tmp_path / "full", init_from=init)
    full.run()
    first = make_trainer(cfg, MODEL, AUG, tiny_data, tmp_path / "cut", init_from=init)
    assert first.run(stop_after_steps=6).interrupted  # 4 steps per epoch: stops inside epoch 2
    assert ckpt.load(tmp_path / "cut" / "last.pt")["step"] == 2
    resumed = make_trainer(cfg, MODEL, AUG, tiny_data, tmp_path / "cut", init_from=init)
    assert resumed.try_resume()
    resumed = make_trainer(cfg, MODEL, AUG, tiny_data, tmp_path / "cut", init_from=init)
    resumed.run()
    _same_state(full.model.state_dict(), resumed.model.state_dict())
    assert torch.equal(full.method.bank.memory, resumed.method.bank.memory)
    assert [h["loss"] for h in resumed.state.history] == [h["loss"] for h in full.state.history]
    assert [h["epoch"] for h in resumed.state.history] == [1, 2, 3]


def test_checkpoint_of_other_params_is_not_resumed(tiny_data, tmp_path):
    make_trainer(ir_cfg(epochs=1), MODEL, AUG, tiny_data, tmp_path / "ck").run()
    other = make_trainer(ir_cfg(epochs=1, lr=0.01), MODEL, AUG, tiny_data, tmp_path / "ck")
    assert not other.try_resume()


def test_data_changed_under_the_same_name_and_count_is_neither_resumed_nor_warm_started_from(tiny_data, tmp_path):
    """prepare.seed changed the images, not the dataset's name or size: the checkpoint and the
    IR export of the old data are refused, and the model trained on the new data differs."""
    ir = make_trainer(ir_cfg(epochs=1), MODEL, AUG, tiny_data, tmp_path / "ck")
    ir.run()
    ir.export(tmp_path / "ir.pt")
    old = {k: v.clone() for k, v in ir.model.state_dict().items()}
    make_arrays_dataset(tiny_data.parent / "reseeded", seed=1)  # same name "tiny", same 32 + 16 images
    for name in ("train_images.npy", "train_labels.npy"):
        (tiny_data / name).write_bytes((tiny_data.parent / "reseeded" / name).read_bytes())
    again = make_trainer(ir_cfg(epochs=1), MODEL, AUG, tiny_data, tmp_path / "ck")
    assert not again.try_resume()  # before: resumed as finished, with the old model
    again.run()
    assert any(not torch.equal(old[k], v) for k, v in again.model.state_dict().items() if v.is_floating_point())
    with pytest.raises(UserError, match="was trained on other data than this run's tiny"):
        make_trainer(la_cfg(), MODEL, AUG, tiny_data, tmp_path / "la", init_from=tmp_path / "ir.pt")


def test_warm_start_of_another_architecture_or_dataset_is_a_clear_error(tiny_data, tmp_path):
    ir = make_trainer(ir_cfg(epochs=1), MODEL, AUG, tiny_data, tmp_path / "ck")
    ir.run()
    ir.export(tmp_path / "ir.pt")
    with pytest.raises(UserError, match="arch: checkpoint has 'resnet18', config asks for 'resnet50'"):
        make_trainer(la_cfg(), ModelConfig(arch="resnet50", embedding_dim=16), AUG, tiny_data, tmp_path / "la",
                   init_from=tmp_path / "ir.pt")
    bigger = tmp_path / "bigger"
    make_arrays_dataset(bigger, n_train=40)
    with pytest.raises(UserError, match="with 32 images; this run trains on tiny with 40"):
        make_trainer(la_cfg(), MODEL, AUG, bigger, tmp_path / "la2", init_from=tmp_path / "ir.pt")
    with pytest.raises(UserError, match="does not exist"):
        make_trainer(la_cfg(), MODEL, AUG, tiny_data, tmp_path / "la3", init_from=tmp_path / "missing.pt")


# The 1- and 2-process runs add the same numbers in different orders (gradient all-reduce, batch
# norm statistics, bank gathers), so they are compared in float64: in float32 the NCE loss,
# exp(v.v'/0.07) normalised by an estimated Z, amplifies rounding about 1e4-fold per step, and
# one CPU's kernels met 1e-4 where another's did not. In float64 the same amplification leaves
# about 1e-12; sqrt(eps64) = 1.5e-8 keeps four orders of margin, while a real error (a wrong
# slice, gradients not averaged, the bank not gathered, per-device batch norm) differs by
# 1e-3 or more, which each test checks against a run that makes that error.
DDP_KW = dict(epochs=2, float64=True)
TOL = dict(atol=float(torch.finfo(torch.float64).eps) ** 0.5, rtol=float(torch.finfo(torch.float64).eps) ** 0.5)


def sup_cfg(**kw):
    return SupervisedConfig(**{**COMMON, "epochs": 2, **kw})


CFG = {"ir": ir_cfg, "la": la_cfg, "la-torch-kmeans": lambda **kw: la_cfg(kmeans_backend="torch", **kw),
       "supervised": sup_cfg}


@gloo_worker
def _ddp_worker(rank: int, world: int, init: str, kind: str, data, out, extra=None):
    init_gloo(init, rank, world)
    cfg = CFG[kind](**DDP_KW, num_processes=world, **(extra or {}))
    init = out / "ir.pt" if kind.startswith("la") else None
    t = make_trainer(cfg, MODEL, AUG, data, out / f"ddp_{kind}", init_from=init, val_dir=data,
                     dist=DistInfo(rank, world, rank, torch.device("cpu")))
    t.run()
    bank = t.method.bank.memory if hasattr(t.method, "bank") else None
    torch.save({"model": t.trainable.state_dict(), "bank": bank, "history": t.state.history, "extra": t.state.extra},
               out / f"ddp_{kind}_rank{rank}.pt")


def _assert_states_close(found: dict, expected: dict, **tol) -> None:
    for name, value in expected.items():
        if value.dtype.is_floating_point:
            torch.testing.assert_close(found[name], value, **tol, msg=lambda m, name=name: f"{name} differs: {m}")
        else:
            assert torch.equal(found[name], value), name


def _max_difference(a: dict, b: dict) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in b if b[k].dtype.is_floating_point)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["ir", "la", "la-torch-kmeans", "supervised"])
def test_two_gloo_processes_equal_one_process(kind, tiny_data, tmp_path):
    """Every trainable stage: 2 processes (gloo, DDP) end where one process with batch norm
    over each half of the batch ends (what two devices with per-device batch norm compute),
    in float64, and not where a process with batch norm over the whole batch ends. The kNN
    monitors (each rank embeds its shard) and the k-means (faiss on rank 0, or torch sharded)
    give the same numbers too."""
    if kind.startswith("la"):
        ir = make_trainer(ir_cfg(epochs=1, float64=True), MODEL, AUG, tiny_data, tmp_path / "ck_ir")
        ir.run()
        ir.export(tmp_path / "ir.pt")
    init = tmp_path / "ir.pt" if kind.startswith("la") else None
    single = make_trainer(CFG[kind](**DDP_KW, bn_groups=2), MODEL, AUG, tiny_data, tmp_path / "one", init_from=init,
                          val_dir=tiny_data)
    single.run()
    mp.spawn(_ddp_worker, args=(2, rendezvous(tmp_path), kind, tiny_data, tmp_path), nprocs=2, join=True)
    r0 = torch.load(tmp_path / f"ddp_{kind}_rank0.pt")
    r1 = torch.load(tmp_path / f"ddp_{kind}_rank1.pt")
    # parameters only: batch-norm running statistics are each device's own (rank 0's, broadcast by
    # DDP), where the grouped process updates them once per half
    expected = {name: p.detach() for name, p in single.trainable.named_parameters()}
    _assert_states_close(r0["model"], expected, **TOL)
    _assert_states_close(r1["model"], {k: r0["model"][k] for k in expected}, atol=0, rtol=0)  # one model
    assert [h["loss"] for h in r0["history"]] == pytest.approx([h["loss"] for h in single.state.history],
                                                                rel=TOL["rtol"], abs=TOL["atol"])
    # the monitors split over the ranks evaluate one network (rank 0's batch-norm statistics):
    # both ranks report the same kNN, and before training it is the single process's
    assert [h["knn_top1"] for h in r1["history"]] == [h["knn_top1"] for h in r0["history"]]
    assert r0["extra"] == single.state.extra
    if kind.startswith("la"):
        assert [h["cluster_nmi"] for h in r0["history"]] == pytest.approx(
            [h["cluster_nmi"] for h in single.state.history], rel=TOL["rtol"], abs=TOL["atol"])
    if kind != "supervised":
        assert torch.equal(r0["bank"], r1["bank"]), "bank replicas diverged"
        torch.testing.assert_close(r0["bank"], single.method.bank.memory, **TOL)
    whole = make_trainer(CFG[kind](**DDP_KW), MODEL, AUG, tiny_data, tmp_path / "whole", init_from=init)
    whole.run()
    assert _max_difference(dict(whole.trainable.named_parameters()), expected) > 1e4 * TOL["atol"]


@pytest.mark.slow
def test_sync_bn_pretraining_on_two_gloo_processes_follows_one_process_with_the_whole_batch(tiny_data, tmp_path):
    """The pretraining option end to end (test_batchnorm.py checks the arithmetic): 2 processes
    with sync_bn end where one process with batch norm over all 16 images ends (float64), not
    where per-device batch norm (8 images each) ends."""
    kw = {"batch_size": 16}
    single = make_trainer(ir_cfg(**DDP_KW, **kw), MODEL, AUG, tiny_data, tmp_path / "one", val_dir=tiny_data)
    single.run()
    mp.spawn(_ddp_worker, args=(2, rendezvous(tmp_path), "ir", tiny_data, tmp_path, {"sync_bn": True, **kw}), nprocs=2,
             join=True)
    r0, r1 = torch.load(tmp_path / "ddp_ir_rank0.pt"), torch.load(tmp_path / "ddp_ir_rank1.pt")
    _assert_states_close(r1["model"], r0["model"], atol=0, rtol=0)
    _assert_states_close(r0["model"], single.trainable.state_dict(), **TOL)  # running statistics included
    # the kNN monitor, each rank embedding its shard of the held-out split, as one process's
    assert [h["knn_top1"] for h in r0["history"]] == [h["knn_top1"] for h in single.state.history]
    grouped = make_trainer(ir_cfg(**DDP_KW, **kw, bn_groups=2), MODEL, AUG, tiny_data, tmp_path / "grouped")
    grouped.run()
    assert _max_difference(grouped.trainable.state_dict(), single.trainable.state_dict()) > 1e4 * TOL["atol"]


def test_bank_init_features_starts_from_the_initial_network(tiny_data, tmp_path):
    from localagg.training.batches import GlobalBatches

    cfg = ir_cfg(bank_init="features", epochs=1)
    t = make_trainer(cfg, MODEL, AUG, tiny_data, tmp_path / "ck")
    expected = t.embed(t.train_eval)
    assert not torch.allclose(t.method.bank.memory, expected)
    t.run(stop_after_steps=1)
    first = GlobalBatches(32, cfg.seed, cfg.batch_size, 0, DistInfo()).local(0)
    untouched = torch.ones(32, dtype=torch.bool)
    untouched[first] = False
    assert torch.equal(t.method.bank.memory[untouched], expected[untouched])
    assert not torch.allclose(t.method.bank.memory[first], expected[first])


def test_supervised_reference_learns_the_labels(tiny_data, tmp_path):
    """What must hold on any CPU: on separable classes the loss falls far and the classifier fits
    the training labels (not one machine's trajectory). The classes are blob positions, so the
    test's recipe drops random crops and flips (through the section's `augment` keys), which
    would move a blob into another class's quadrant."""
    from localagg.data.augment import evaluate_transform
    cfg = SupervisedConfig(**{**COMMON, "epochs": 8, "lr": 0.01, "batch_size": 16,
                              "augment": {"crop_scale": [1.0, 1.0], "hflip": False, "color_jitter": [0, 0, 0, 0]}})
    aug = cfg.augment_spec(AUG)
    t = make_trainer(cfg, MODEL, aug, tiny_data, tmp_path / "ck", val_dir=tiny_data)
    res = t.run()
    losses = [h["loss"] for h in res.history]
    assert losses[-1] < 0.1 * losses[0], losses
    t.trainable.eval()
    with torch.no_grad():
        images, labels, _ = t.train.batch(torch.arange(len(t.train)))
        predicted = t.trainable(evaluate_transform(images, aug)).argmax(1)
    assert (predicted == labels).float().mean().item() >= 0.9
    t.export(tmp_path / "sup.pt")
    exported = ckpt.load(tmp_path / "sup.pt")
    assert exported["objective"] == "supervised" and exported["classifier"]["weight"].shape == (4, 512)
    # the same export format as IR/LA: later stages load it the same way
    assert exported["model_meta"] == {"arch": "resnet18", "stem": "small", "embedding_dim": 16}


def test_supervised_augment_keys_replace_the_pretraining_recipe():
    cfg = SupervisedConfig(epochs=1, augment={"crop_scale": [0.08, 1.0], "color_jitter": [0, 0, 0, 0]})
    spec = cfg.augment_spec(AUG)
    assert spec.crop_scale == (0.08, 1.0) and spec.color_jitter == (0, 0, 0, 0) and spec.crop_size == AUG.crop_size
    with pytest.raises(ValueError, match="unknown augment key"):
        SupervisedConfig(epochs=1, augment={"crop_scal": [0.08, 1.0]})


def test_a_non_finite_loss_stops_training_at_once_and_exports_nothing(tiny_data, tmp_path):
    hostile = AUG.model_copy(update={"mean": (1e38, 1e38, 1e38)})  # finite, but (x - mean) / std overflows float32
    t = make_trainer(ir_cfg(), MODEL, hostile, tiny_data, tmp_path / "ck")
    with pytest.raises(UserError) as err:
        t.run()
    message = str(err.value)
    assert "loss is nan at epoch 1, step 1" in message or "loss is inf at epoch 1, step 1" in message
    assert "Nothing was exported" in message and "augment.mean" in message and "pretrain_ia.lr" in message
    assert not (tmp_path / "ck" / "last.pt").exists()


def test_a_crafted_or_truncated_checkpoint_is_not_run_and_training_starts_over(tiny_data, tmp_path, caplog):
    marker = tmp_path / "code-ran"
    (tmp_path / "ck").mkdir()
    torch.save({"identity": CodeRunningPickle(marker)}, tmp_path / "ck" / "last.pt")
    t = make_trainer(ir_cfg(epochs=1), MODEL, AUG, tiny_data, tmp_path / "ck")
    with caplog.at_level("WARNING"):
        assert not t.try_resume()
    assert not marker.exists()
    assert "could run code" in caplog.text and "starting this stage over" in caplog.text
    t.run()
    data = (tmp_path / "ck" / "last.pt").read_bytes()
    (tmp_path / "ck" / "last.pt").write_bytes(data[:100])
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert not make_trainer(ir_cfg(epochs=1), MODEL, AUG, tiny_data, tmp_path / "ck").try_resume()
    assert "is truncated or not a torch checkpoint" in caplog.text and "could run code" not in caplog.text
    with pytest.raises(UserError, match="could run code"):
        torch.save({"model": CodeRunningPickle(marker)}, tmp_path / "model.pt")
        ckpt.load_export(tmp_path / "model.pt")
    assert not marker.exists()


def test_exports_are_byte_identical_across_runs(tiny_data, tmp_path):
    """No timing inside model files: a rerun gives the same bytes, so DVC sees nothing changed downstream."""
    for name in ("a", "b"):
        t = make_trainer(ir_cfg(epochs=1), MODEL, AUG, tiny_data, tmp_path / f"ck_{name}")
        t.run()
        t.export(tmp_path / name / "ir.pt")  # the same name: torch.save records it in the archive
    assert (tmp_path / "a" / "ir.pt").read_bytes() == (tmp_path / "b" / "ir.pt").read_bytes()
    provenance = ckpt.load(tmp_path / "a" / "ir.pt")["provenance"]
    assert [p["objective"] for p in provenance] == ["ir"] and provenance[0]["epochs_done"] == 1
    assert provenance[0]["train_images"] == 32 and provenance[0]["arch"] == "resnet18"


def test_on_and_off_read_as_booleans_mean_on_and_off():
    """PyYAML reads an unquoted `on` as True, and DVC writes params unquoted after `exp run -S`."""
    cfg = ir_cfg(channels_last=True, amp=False)
    assert (cfg.channels_last, cfg.amp) == ("on", "off")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_at_the_next_step_with_a_checkpoint_and_the_rerun_ends_as_a_clean_run(signum, tiny_data,
                                                                                             tmp_path, caplog):
    """A preemption's SIGTERM (or Ctrl-C) in the middle of epoch 2: the run saves a checkpoint at
    that step and exits 128 + signal with a message; rerun, it resumes there and ends with the
    model of an uninterrupted run (before: exit 143 with no checkpoint since epoch 1)."""
    cfg = ir_cfg(epochs=3)
    full = make_trainer(cfg, MODEL, AUG, tiny_data, tmp_path / "full")
    full.run()
    cut = make_trainer(cfg, MODEL, AUG, tiny_data, tmp_path / "cut")
    after_step = cut.method.after_step
    calls = []

    def signalled(*args):
        after_step(*args)
        calls.append(1)
        if len(calls) == 6:  # 4 steps an epoch: inside epoch 2
            os.kill(os.getpid(), signum)

    cut.method.after_step = signalled
    before = signal.getsignal(signum)  # pytest-xdist workers ignore SIGINT: whatever it was comes back
    with caplog.at_level("WARNING"), pytest.raises(SystemExit) as stop:
        cut.run()
    assert stop.value.code == 128 + signum
    assert f"stopped by {signal.Signals(signum).name} at epoch 2, step 2 of 4; checkpoint saved" in caplog.text
    assert ckpt.load(tmp_path / "cut" / "last.pt")["global_step"] == 6
    assert signal.getsignal(signum) == before  # the handlers are given back
    resumed = make_trainer(cfg, MODEL, AUG, tiny_data, tmp_path / "cut")
    resumed.run()
    _same_state(full.model.state_dict(), resumed.model.state_dict())
    assert [h["loss"] for h in resumed.state.history] == [h["loss"] for h in full.state.history]
