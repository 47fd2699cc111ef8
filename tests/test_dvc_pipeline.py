"""DVC integration: the whole pipeline runs in a copy of the repository at tiny sizes, a
second run does nothing, a param change reruns exactly the stages that read it, and so do
the experiments of a queued sweep; a clone that pulls the run's outputs from a DVC remote
reruns nothing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

# Tiny sizes: the embedded default's data, a fraction of its size and epochs.
TINY = {
    "prepare": {"object": {"num_train": 256, "num_val": 64},
                "detection": {"num_trainval": 6, "num_test": 4, "image_size": 64, "scale_range": [0.8, 1.2]}},
    "pretrain_ia": {"epochs": 1, "batch_size": 64, "num_negatives": 64, "knn_k": 20},
    "pretrain_la": {"epochs": 1, "batch_size": 64, "k": 64, "num_kmeans": 2, "num_clusters": 8, "lr_drops": [],
                    "knn_k": 20},
    "supervised": {"epochs": 1, "batch_size": 64, "lr_drops": [], "knn_k": 20},
    "transfer": {"seeds": [0], "object": {"epochs": 1, "lr_drops": [], "pool_target_dims": 512},
                 "transfer": {"epochs": 1, "lr_drops": [], "pool_target_dims": 512}, "knn": {"k": 20}},
    "detection": {"max_iter": 4, "steps": [], "warmup_iters": 2, "ims_per_batch": 2, "checkpoint_period": 2,
                  "log_period": 2, "min_size_train": [64], "max_size_train": 64, "min_size_test": 64,
                  "max_size_test": 64},
}
MODELS = ("la", "ir", "random", "supervised")
TRANSFER = {f"transfer@{m}-{d}" for m in MODELS for d in ("object", "transfer")}
PIXELS = {"pixels@object", "pixels@transfer"}
DETECTION = {f"detection@{m}-0" for m in MODELS}
ALL = {"prepare", "pretrain_ia", "pretrain_la", "supervised", "random_init", "report"} | TRANSFER | PIXELS | DETECTION
LA_AND_AFTER = {"pretrain_la", "transfer@la-object", "transfer@la-transfer", "detection@la-0", "report"}
IMPORTED = {"import@mine", "transfer_external@mine-object", "transfer_external@mine-transfer",
            "detection_external@mine-0"}


def _save_in_moco_layout(export: Path, out: Path) -> None:
    """A localagg export as MoCo v1's main_moco.py saves its checkpoints: the query encoder
    under module.encoder_q. (the 128-d fc is the embedding), a key encoder and a queue beside it."""
    import torch

    state = torch.load(export, map_location="cpu", weights_only=True)["model"]
    q = {k.removeprefix("trunk."): v for k, v in state.items() if k.startswith("trunk.")}
    q.update({"fc.weight": state["head.weight"], "fc.bias": state["head.bias"]})
    sd = {f"module.encoder_q.{k}": v for k, v in q.items()}
    sd.update({f"module.encoder_k.{k}": v.clone() for k, v in q.items()})
    sd.update({"module.queue": torch.randn(128, 16), "module.queue_ptr": torch.zeros(1, dtype=torch.long)})
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 1, "arch": "resnet18", "state_dict": sd, "optimizer": {}}, out)


def _csv_rows(path: Path) -> dict[tuple, str]:
    """results.csv as {(model, task, dataset, layer, metric): value}."""
    import csv

    with open(path) as f:
        return {(r["model"], r["task"], r["dataset"], r["layer"], r["metric"]): r["value"] for r in csv.DictReader(f)}


def _merge(base: dict, over: dict) -> dict:
    for k, v in over.items():
        base[k] = _merge(base.get(k, {}), v) if isinstance(v, dict) else v
    return base


def _run(args, cwd):
    # Python writes bytecode next to the sources, as on most machines: dependency hashes must not see it
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update(PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", LOCALAGG_NO_PROGRESS="1")
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(map(str, args))} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def _set_params(repo: Path, over: dict) -> None:
    path = repo / "params.yaml"
    path.write_text(yaml.safe_dump(_merge(yaml.safe_load(path.read_text()), over), sort_keys=False))


def _stale(repo: Path) -> set[str]:
    """Stages that `dvc status` reports as changed (without running anything)."""
    out = _run([str(BIN / "dvc"), "status", "--json"], repo)
    return set(json.loads(out[out.index("{"):]))


def _ran(output: str) -> set[str]:
    """Stage names that `dvc repro` says it ran."""
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


def _skipped(output: str) -> set[str]:
    """Stage names that `dvc repro` says it skipped (nothing changed)."""
    return {line.split("'")[1] for line in output.splitlines() if line.endswith("didn't change, skipping")}


def _commit(repo: Path, message: str) -> None:
    _run(["git", "add", "-A"], repo)
    _run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", message], repo)


def copy_repository(dst: Path, over: dict) -> Path:
    """The repository's tracked and new files (no data or results) in `dst`, a fresh git repo
    with the params of `over` merged in."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split("\n")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file() and not rel.startswith(("data/", "models/", "checkpoints/", "metrics/", "records/", "dvclive/")):
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    (dst / "dvc.lock").unlink(missing_ok=True)
    _set_params(dst, over)
    _run(["git", "init", "-q"], dst)
    _commit(dst, "copy")
    return dst


@pytest.fixture(scope="module")
def repo_copy(tmp_path_factory):
    return copy_repository(tmp_path_factory.mktemp("repo"), TINY)


@pytest.mark.slow
@pytest.mark.timeout(1800)  # about 3 minutes on 2 idle cores; a loaded machine can take several times that
def test_repro_then_nothing_then_only_affected_stages(repo_copy):
    dvc = str(BIN / "dvc")
    assert _ran(_run([dvc, "repro"], repo_copy)) == ALL
    for out in ("models/la.pt", "metrics/transfer/la-object.json", "records/transfer/pixels-object.json",
                "metrics/detection/random-seed0.json", "reports/results.md", "reports/results.csv"):
        assert (repo_copy / out).is_file(), out
    assert _ran(_run([dvc, "repro"], repo_copy)) == set()
    assert _stale(repo_copy) == set()

    # each param alone makes stale exactly the stages that read it; set back, nothing is stale
    # (what reruns downstream of a changed output is the sweep's to show)
    params = (repo_copy / "params.yaml").read_text()
    for change, stale in (
            ({"transfer": {"object": {"lr": 0.02}}},  # a readout param of one dataset: its cells and pixels'
             {f"transfer@{m}-object" for m in MODELS} | {"pixels@object"}),
            ({"detection": {"base_lr": 0.02}}, DETECTION),  # a detection param: every detection cell
            # a second seed adds cells, and the report reads the seed list; the cells of seed 0 keep their results
            ({"detection": {"seeds": [0, 1]}}, {f"detection@{m}-1" for m in MODELS} | {"report"}),
            ({"pretrain_la": {"lr": 0.01}}, {"pretrain_la"})):  # an LA param: LA alone reads it
        _set_params(repo_copy, change)
        assert _stale(repo_copy) == stale, change
        (repo_copy / "params.yaml").write_text(params)
    assert _stale(repo_copy) == set()

    # a checkpoint trained elsewhere, outside the repository: LA's own model re-saved in MoCo v1's
    # layout and added under `external`. Only its import, its cells and the report run; it reads
    # LA's numbers in every table, and its published number is set beside this run's
    moco = repo_copy.parent / "elsewhere" / "checkpoint_0199.pth.tar"
    _save_in_moco_layout(repo_copy / "models/la.pt", moco)
    _set_params(repo_copy, {"external": {"mine": {"path": str(moco), "method": "LA re-saved by MoCo", "epochs": 1,
                                                  "published": {"object_best_top1": 12.5}}}})
    assert _stale(repo_copy) == IMPORTED | {"report"}
    assert _ran(_run([dvc, "repro"], repo_copy)) == IMPORTED | {"report"}
    rows = _csv_rows(repo_copy / "reports/results.csv")
    la = {k[1:]: v for k, v in rows.items() if k[0] == "la"}
    assert la and {k[1:]: v for k, v in rows.items() if k[0] == "mine"} == la
    text = (repo_copy / "reports/results.md").read_text()
    assert "## Imported models" in text and "| `mine` | LA re-saved by MoCo | 1 | moco |" in text
    assert "| `mine` | object_best_top1 | 12.50 |" in text and "not comparable: readout on fashion_mnist" in text
    assert _ran(_run([dvc, "repro"], repo_copy)) == set()

    # a queued sweep of an LA param: each experiment runs in a fresh checkout (no persistent
    # checkpoints, no bytecode caches) and reruns only LA, its evaluations and the report
    _commit(repo_copy, "results")
    _run([dvc, "exp", "run", "--queue", "-S", "pretrain_la.num_clusters=6,10"], repo_copy)
    experiments = _run([dvc, "exp", "run", "--run-all"], repo_copy).split("Reproducing experiment")[1:]
    assert len(experiments) == 2 and [_ran(e) for e in experiments] == [LA_AND_AFTER, LA_AND_AFTER]

    # a prepare param that changes only the detection set: prepare reruns, the object set is
    # byte-identical, so only the detection cells (and the report, which reads the prepared detection set)
    # are stale after it
    _set_params(repo_copy, {"prepare": {"detection": {"num_test": 3}}})
    assert _ran(_run([dvc, "repro", "prepare"], repo_copy)) == {"prepare"}
    assert _stale(repo_copy) == DETECTION | {"detection_external@mine-0", "report"}

    # the object set changes: the pretraining chain reruns
    _set_params(repo_copy, {"prepare": {"object": {"num_train": 192}}})
    assert _ran(_run([dvc, "repro", "pretrain_la"], repo_copy)) == {"prepare", "pretrain_ia", "pretrain_la"}

    # metrics and plots are readable by DVC
    shown = _run([dvc, "metrics", "show"], repo_copy)
    assert "knn_top1" in shown and "AP50" in shown and "best_top1" in shown and "cluster_nmi" in shown
    assert max(len(line) for line in shown.splitlines()) <= 200  # one screen wide
    plots = _run([dvc, "plots", "show", "--json"], repo_copy)
    assert "pretraining kNN top-1" in plots and "LA readout loss per layer, object set" in plots


@pytest.mark.slow
@pytest.mark.timeout(900)  # a minute of DVC commands on 2 idle cores; a loaded machine can take several times that
def test_a_clone_pulls_the_models_from_a_remote_and_retrains_nothing(repo_copy):
    """How a run is shared: git holds the code, params, dvc.lock and the uncached records,
    metrics and reports; a DVC remote (here a local directory) holds the cached outputs, the
    prepared data and the models. A clone without them would rerun every stage; after
    `dvc pull` it is up to date and `dvc repro` trains nothing. Reuses the run of the test
    above: the state of its "results" commit."""
    dvc = str(BIN / "dvc")
    # the test above leaves param changes after its "results" commit: back to that commit
    _run(["git", "reset", "-q", "--hard"], repo_copy)
    if not (repo_copy / "dvc.lock").is_file():
        pytest.skip("needs the run of test_repro_then_nothing_then_only_affected_stages (its results commit)")
    _run([dvc, "checkout", "--force"], repo_copy)
    assert _stale(repo_copy) == set()

    remote, clone = repo_copy.parent / "remote", repo_copy.parent / "clone"
    _run([dvc, "remote", "add", "-d", "shared", str(remote)], repo_copy)
    _run([dvc, "push"], repo_copy)
    _commit(repo_copy, "the shared remote")

    # the clone has git's files only: no model, and every stage is stale
    _run(["git", "clone", "-q", str(repo_copy), str(clone)], repo_copy.parent)
    assert (clone / "reports/results.md").is_file() and not (clone / "models/la.pt").exists()
    assert _stale(clone) == ALL | IMPORTED

    _run([dvc, "pull"], clone)
    for out in ("models/la.pt", "models/ir.pt", "models/supervised.pt", "models/random.pt", "models/mine.pt"):
        assert (clone / out).read_bytes() == (repo_copy / out).read_bytes(), out
    assert _stale(clone) == set()
    mtime = (clone / "models/la.pt").stat().st_mtime_ns
    out = _run([dvc, "repro"], clone)
    assert _ran(out) == set() and _skipped(out) == ALL | IMPORTED
    assert (clone / "models/la.pt").stat().st_mtime_ns == mtime
