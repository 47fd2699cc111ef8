"""The command line: user errors are one message with a non-zero exit and no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent


def localagg(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "stages", *args], cwd=cwd, capture_output=True, text=True)


def write_params(tmp_path, mutate) -> Path:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    mutate(params)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def _assert_user_error(proc, *fragments):
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    for f in fragments:
        assert f in proc.stderr, proc.stderr


def test_unknown_key_is_named(tmp_path):
    path = write_params(tmp_path, lambda p: p["prepare"]["object"].update(num_trian=5))
    _assert_user_error(localagg("prepare", "--params", str(path)), "prepare.object.num_trian: unknown key", "num_train")


@pytest.mark.parametrize("mutate, fragments", [
    (lambda p: p["prepare"]["object"].update(num_train=-1), ["prepare.object.num_train", "greater than or equal to 0"]),
    (lambda p: p["prepare"]["object"].update(num_train="many"), ["prepare.object.num_train", "'many'"]),
    (lambda p: p["prepare"].update(detection={"source": "voc"}), ["prepare.detection", "root is required"]),
    (lambda p: p["prepare"]["object"].update(root="/nonexistent/fm"), ["prepare.object.root = /nonexistent/fm", "does not exist"]),
    (lambda p: p.update(pretrain_iaa={}), ["unknown section pretrain_iaa (did you mean pretrain_ia?)"]),
    (lambda p: p["prepare"]["detection"].update(objects_per_image=[3, 1]), ["objects_per_image"]),
    # ImageNet with the synthetic detection set: refused up front, not after decoding every image
    (lambda p: p["prepare"]["object"].update(source="imagenet", root="/nonexistent/imagenet", num_train=0, num_val=0,
                                             canvas=0),
     ["detection.source synthetic builds its scenes from Fashion-MNIST, but object.source is imagenet"]),
])
def test_bad_prepare_params_stop_before_work(tmp_path, mutate, fragments):
    _assert_user_error(localagg("prepare", "--params", str(write_params(tmp_path, mutate))), *fragments)
    assert not (tmp_path / "data").exists()


def test_bad_pretrain_params(tmp_path):
    path = write_params(tmp_path, lambda p: p["pretrain_la"].update(lr_drops=[50]))
    _assert_user_error(localagg("pretrain-la", "--params", str(path)), "pretrain_la", "lr_drops")
    path = write_params(tmp_path, lambda p: p["model"].update(arch="resnet101"))
    _assert_user_error(localagg("pretrain-ia", "--params", str(path)), "model.arch", "resnet18")


def test_missing_params_file(tmp_path):
    _assert_user_error(localagg("prepare", "--params", str(tmp_path / "nope.yaml")), "does not exist")


def test_pretrain_before_prepare_names_the_stage(tmp_path):
    proc = localagg("pretrain-ia", "--params", str(REPO / "params.yaml"), cwd=tmp_path)
    _assert_user_error(proc, "run the `prepare` stage first")


def test_preset_apply_prints_what_changed_and_refuses_an_unknown_preset(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text((REPO / "params.yaml").read_text())
    proc = localagg("preset", "apply", "paper-resnet50", "--params", str(path))
    assert proc.returncode == 0, proc.stderr
    assert "model.arch: resnet18 -> preact_resnet50" in proc.stdout and "value(s) changed" in proc.stderr
    assert yaml.safe_load(path.read_text())["prepare"]["object"]["source"] == "imagenet"
    _assert_user_error(localagg("preset", "apply", "no-such-preset", "--params", str(path)), "unknown preset")


def test_help_lists_every_stage():
    out = localagg("--help").stdout
    for cmd in ("prepare", "pretrain-ia", "pretrain-la", "supervised", "random-init", "transfer", "detection", "report",
                "preset", "check"):
        assert cmd in out


def test_transfer_without_its_model_names_the_stage_to_run(tmp_path):
    proc = localagg("transfer", "--model", "la", "--dataset", "object", "--params", str(REPO / "params.yaml"), cwd=tmp_path)
    _assert_user_error(proc, "models/la.pt does not exist", "dvc repro pretrain_la")
    proc = localagg("transfer", "--model", "byol", "--dataset", "object", "--params", str(REPO / "params.yaml"), cwd=tmp_path)
    _assert_user_error(proc, "unknown model 'byol'; expected one of: la, ir, random, supervised, pixels",
                       "add it under `external:`")


def test_detection_without_its_model_names_the_stage_to_run(tmp_path):
    proc = localagg("detection", "--model", "ir", "--params", str(REPO / "params.yaml"), cwd=tmp_path)
    _assert_user_error(proc, "models/ir.pt does not exist", "dvc repro pretrain_ia")
    proc = localagg("detection", "--model", "moco", "--params", str(REPO / "params.yaml"), cwd=tmp_path)
    _assert_user_error(proc, "unknown model 'moco'; expected one of: la, ir, random, supervised (a checkpoint")


@pytest.mark.parametrize("mutate, fragments", [
    (lambda p: p["detection"].update(seed=3), ["detection.seed", "detection.seeds"]),
    (lambda p: p["detection"].update(seeds=[1, 1]), ["detection.seeds", "distinct"]),
    (lambda p: p["transfer"].update(seeds=[]), ["transfer.seeds"]),  # detection.seeds [] is allowed: no detection cells
    (lambda p: p["detection"].update(norm="SyncBN"), ["SyncBN", "needs CUDA"]),
    (lambda p: p["detection"].update(steps=[400]), ["detection", "steps"]),
    (lambda p: p["transfer"]["object"].update(seed=2), ["transfer.seeds"]),
])
def test_bad_evaluation_params(tmp_path, mutate, fragments):
    _assert_user_error(localagg("check", "--params", str(write_params(tmp_path, mutate))), *fragments)


def test_detection_on_cuda_without_enough_gpus_stops_before_training(tmp_path):
    import torch

    if torch.cuda.device_count() >= 8:
        pytest.skip("this machine has 8 GPUs")
    path = write_params(tmp_path, lambda p: p["detection"].update(device="cuda", norm="SyncBN", num_gpus=8, ims_per_batch=16))
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "la.pt").write_bytes(b"")  # never read: the GPU check comes first
    manifest = tmp_path / "data" / "prepared" / "detection" / "detection.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({"name": "voc", "root": "VOCdevkit", "annotations": "VOCdevkit", "classes": ["cat"],
                                    "splits": {"trainval": [["VOC2007", "trainval"]], "test": [["VOC2007", "test"]]}}))
    proc = localagg("detection", "--model", "la", "--params", str(path), cwd=tmp_path)
    _assert_user_error(proc, "detection.num_gpus is 8", "GPU(s)")
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("mutate, fragments", [
    (lambda p: p["augment"].update(std=[0, 0, 0]), ["augment.std", "must be > 0"]),
    (lambda p: p["augment"].update(crop_scale=[1.5, 0.2]), ["augment.crop_scale", "0 < min <= max <= 1"]),
    (lambda p: p["pretrain_la"].update(temperature=float("inf")), ["pretrain_la.temperature", "finite"]),
    (lambda p: p["pretrain_la"].update(k=20000), ["pretrain_la.k: 20,000 is larger than the 8,000 training images"]),
    (lambda p: p["transfer"]["knn"].update(k=5000), ["transfer.knn.k: 5,000 is larger than the 4,000 training images "
                                                     "of the transfer set"]),
    (lambda p: p["pretrain_ia"].update(sync_bn=True, bn_groups=2), ["sync_bn", "bn_groups"]),
])
def test_check_catches_semantic_errors_and_sizes_that_do_not_fit_the_data(tmp_path, mutate, fragments):
    _assert_user_error(localagg("check", "--params", str(write_params(tmp_path, mutate))), *fragments)


def test_check_reports_every_problem_at_once_and_a_missing_section(tmp_path):
    def mutate(p):
        del p["supervised"]
        p["augment"]["std"] = [0, 0, 0]
        p["pretrain_la"]["num_cluster"] = 5
    proc = localagg("check", "--params", str(write_params(tmp_path, mutate)))
    _assert_user_error(proc, "3 problem(s)", "supervised: section is missing", "augment.std",
                       "pretrain_la.num_cluster: unknown key (did you mean num_clusters?)")


def test_a_crafted_model_file_is_refused_without_running_its_code(tmp_path):
    import torch

    from tests.conftest import CodeRunningPickle, make_arrays_dataset

    (tmp_path / "models").mkdir()
    marker = tmp_path / "code-ran"
    torch.save({"model": CodeRunningPickle(marker), "model_meta": {}, "objective": "random"}, tmp_path / "models" / "random.pt")
    make_arrays_dataset(tmp_path / "data" / "prepared" / "object")
    params = write_params(tmp_path, lambda p: p["transfer"]["knn"].update(k=5))
    proc = localagg("transfer", "--model", "random", "--dataset", "object", "--params", str(params), cwd=tmp_path)
    _assert_user_error(proc, "models/random.pt", "could run code")
    assert not marker.exists()


def test_a_second_writer_of_the_same_outputs_is_refused_with_the_holders_pid(tmp_path):
    import fcntl
    import os

    (tmp_path / ".locks").mkdir()
    with open(tmp_path / ".locks" / "report.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        proc = localagg("report", "--params", str(REPO / "params.yaml"), cwd=tmp_path)
    _assert_user_error(proc, f"another localagg process (PID {os.getpid()}) is writing reports/", f"kill {os.getpid()}")
    assert not (tmp_path / "reports").exists()


def test_progress_is_one_log_line_per_epoch_in_a_pipe(tmp_path):
    """Piped (CI, SLURM, nohup), a stage still says how it goes: a line per epoch with loss, lr,
    img/s, kNN, elapsed time and ETA (no progress bars off a terminal)."""
    import re

    from tests.conftest import make_arrays_dataset

    make_arrays_dataset(tmp_path / "data" / "prepared" / "object")
    params = write_params(tmp_path, lambda p: p["pretrain_ia"].update(epochs=2, batch_size=8, knn_k=5))
    proc = subprocess.run(f"{sys.executable} -m stages pretrain-ia --params {params} 2>&1 | cat", shell=True,
                          cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "LOCALAGG_NO_PROGRESS": ""})
    assert proc.returncode == 0, proc.stdout
    lines = [line for line in proc.stdout.splitlines() if " ir epoch " in line]
    assert len(lines) == 2, proc.stdout
    pattern = (r"^\d\d:\d\d:\d\d ir epoch (\d)/2: loss [\d.]+, lr 0.03, [\d,]+ img/s, kNN [\d.]+%, epoch \d+s, "
               r"elapsed \d+s, ETA \d+s$")
    assert [re.match(pattern, line).group(1) for line in lines] == ["1", "2"], lines
    assert "\r" not in proc.stdout  # no progress bar in a pipe
    # dvclive's kNN curve starts at epoch 0 with the untrained network's kNN, then one row per epoch
    rows = [r.split("\t") for r in (tmp_path / "dvclive/pretrain_ia/plots/metrics/knn_top1.tsv").read_text().splitlines()]
    init = json.loads((tmp_path / "metrics/pretrain_ia.json").read_text())["knn_top1_init"]
    assert rows[0] == ["step", "knn_top1"] and [r[0] for r in rows[1:]] == ["0", "1", "2"] and float(rows[1][1]) == init


def test_check_refuses_a_readout_feature_cache_larger_than_the_memory_here(tmp_path):
    """The paper preset with ImageNet's readout cached: 1,331,167 images x 351,232 official-pooling
    features of ResNet-50 x 4 bytes (1.7 TiB) cannot fit; the embedded default's cache fits."""
    from stages.params import cache_problems, validate_all
    from stages.prepare import expected_sizes

    def cached(p):
        p["model"].update(arch="resnet50")
        p["augment"]["crop_size"] = 224
        p["prepare"]["object"] = {"source": "imagenet", "root": str(tmp_path / "imagenet")}
        p["prepare"]["detection"] = {"source": "voc", "root": str(tmp_path / "VOCdevkit")}
        p["transfer"]["object"].update(crop_size=224, eval_resize=256, pool_rule="official", pool_target_dims=200000,
                                       conv1_point="after_maxpool", train_augment="none", cache_features=True,
                                       ten_crop=False)
    proc = localagg("check", "--params", str(write_params(tmp_path, cached)), cwd=tmp_path)
    _assert_user_error(proc, "transfer.object.cache_features: the feature cache of", "(1,281,167 training + 50,000 "
                       "validation images)", "set cache_features: false")
    sections = validate_all(REPO / "params.yaml", data_sizes=expected_sizes)  # the embedded default: it fits
    assert cache_problems(sections["model"], sections["transfer"].object, "transfer.object", 8000, 2000,
                          available=2**30) == []
    assert cache_problems(sections["model"], sections["transfer"].object, "transfer.object", 8000, 2000,
                          available=2**20) != []


def _file_size_limit(limit: int):
    """For the child: writes past `limit` bytes fail with EFBIG (a full disk's error path),
    without the SIGXFSZ that would kill the process first."""
    import resource
    import signal

    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_full_disk_is_one_message_naming_the_file_and_the_old_output_stays_whole(tmp_path):
    """The untrained model (~45 MB) under a 1 MB file-size limit: one message with the path, the
    space it needs and what is free; no traceback, no temporary left, the old model untouched."""
    params = write_params(tmp_path, lambda p: None)
    (tmp_path / "models").mkdir()
    (tmp_path / "models/random.pt").write_bytes(b"the previous model")
    proc = subprocess.run([sys.executable, "-m", "stages", "random-init", "--params", str(params)], cwd=tmp_path,
                          capture_output=True, text=True, preexec_fn=_file_size_limit(2**20))
    said = " ".join(proc.stderr.split())
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "models/random.pt: cannot be written (no space left). The file needs about 4" in said, said
    assert "MiB are free on the file system of" in said and "Nothing was half-written" in said
    assert (tmp_path / "models/random.pt").read_bytes() == b"the previous model"
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["random.pt"]


def test_check_refuses_a_dataset_root_that_does_not_exist(tmp_path):
    """The preset's placeholder root is not a valid run: `check` says so before `prepare` would."""
    def mutate(p):
        p["prepare"]["transfer"] = {"source": "places205", "root": str(tmp_path / "datasets/places205")}
        p["transfer"]["transfer"]["cache_features"] = False  # 2.4M images' features would not fit here
    _assert_user_error(localagg("check", "--params", str(write_params(tmp_path, mutate))), "1 problem(s)",
                       f"prepare.transfer.root = {tmp_path}/datasets/places205: folder does not exist")
