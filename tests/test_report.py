"""The report stage: results.csv/md and figures from the stages' records, the sweep table, and the
errors for missing or malformed inputs.

tests/fixtures/report/exp_show.json is real `dvc exp show --json -A` output of dvc 3.67, made by
tests/fixtures/report/make_exp_show.py (its docstring says how the metrics follow the params;
rerun it after a change of the metrics layout and update the revisions below).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from localagg.errors import UserError
from localagg.report.markdown import brace_paths
from localagg.report.paper import NETWORKS, RECIPE, network_of
from stages import report
from stages.cli import app

FIXTURE = Path(__file__).parent / "fixtures" / "report" / "exp_show.json"
MODELS = ("la", "ir", "random", "supervised")
LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5")
BASE = {"la": 50.0, "ir": 40.0, "random": 10.0, "supervised": 70.0, "pixels": 5.0}
OFFSET = {"top1": 0.0, "top5": 10.0, "top1_10crop": 1.0, "top5_10crop": 11.0}
AP50 = {"la": 60.0, "ir": 55.0, "random": 20.0, "supervised": 65.0}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def linear_value(model, dataset, layer_index, metric, seed):
    return BASE[model] + 2 * layer_index + OFFSET[metric] + seed + (5.0 if dataset == "transfer" else 0.0)


def dump(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def paper_provenance(model: str, arch="resnet50", dataset="imagenet", train_images=1_281_167, crop=224,
                     epochs=None, recipe=RECIPE) -> list[dict]:
    """The provenance a model export records when every key of the paper's recipe (ResNet-50's,
    or `recipe`) was used."""
    def stage(objective, section, done):
        config = {k.split(".", 1)[1]: v for k, (v, _) in recipe.items() if k.startswith(section + ".")}
        augment = {k.split(".", 1)[1]: v for k, (v, _) in recipe.items() if k.startswith("augment.")}
        return {"objective": objective, "arch": arch, "stem": "imagenet", "embedding_dim": 128,
                "bn_momentum": recipe["model.bn_momentum"][0], "augment": {**augment, "crop_size": crop}, "dataset": dataset, "train_images": train_images,
                "val_images": 50_000, "world_size": 8, "config": config, "epochs_done": done}

    epochs = epochs or {"ir": recipe["pretrain_ia.epochs"][0], "la": recipe["pretrain_la.epochs"][0]}
    chain = [stage("ir", "pretrain_ia", epochs["ir"])]
    if model == "la":
        chain.append(stage("la", "pretrain_la", epochs["la"]))
    elif model != "ir":
        chain = [{"objective": model, "arch": arch, "epochs_done": 0}]
    return chain


def readout_protocol(role: str, dataset: str, train: int, val: int, recipe=RECIPE) -> dict:
    readout = {k.split(".", 2)[2]: v for k, (v, _) in recipe.items() if k.startswith(f"transfer.{role}.")}
    return {"dataset": dataset, "train_images": train, "val_images": val, "readout": readout,
            "knn": {"k": 200, "temperature": 0.07}}


def detection_protocol(train_sets=None, train_images=5_011, test_images=4_952) -> dict:
    schedule = {k.split(".", 1)[1]: v for k, (v, _) in RECIPE.items() if k.startswith("detection.")}
    return {"detector": "Detectron2 Faster R-CNN R50-C4", "train_sets": train_sets or [["VOC2007", "trainval"]],
            "test_sets": [["VOC2007", "test"]], "train_images": train_images, "test_images": test_images, **schedule}


DETECTOR_REASON = ("Detectron2 Faster R-CNN R50-C4 instead of the authors' tf-faster-rcnn (the paper's AP is never "
                   "set against another detector's)")


def _history(losses, knn_start=60.0):
    return [{"epoch": i + 1, "loss": v, "knn_top1": knn_start + i + 1, "lr": 0.03} for i, v in enumerate(losses)]


def _images(root: Path, name: str) -> None:
    """A prepared object set of 100 + 100 grey 16 px images (10 classes) for the pictures."""
    from localagg.data.manifest import write_arrays_dataset

    rng = np.random.default_rng(0)
    labels = np.arange(100) % 10
    split = (rng.integers(0, 256, (100, 16, 16), dtype=np.uint8), labels)
    write_arrays_dataset(root / "data" / "prepared" / "object", name, [f"class {i}" for i in range(10)],
                         {"train": split, "val": split})


def _views(model: str) -> dict:
    rng = np.random.default_rng(len(model))
    return {"retrieval": {"queries": list(range(8)), "neighbours": rng.integers(0, 100, (8, 8)).tolist()},
            "map": {"indices": list(range(50)), "xy": rng.normal(size=(50, 2)).round(3).tolist()}}


def write_run(root: Path, names=("fashion_mnist", "mnist_5k", "synthetic_voc"), arch="resnet18",
              transfer_seeds=(0, 1), paper_protocol=False, detection_sets=None, detection_seeds=(0,)) -> Path:
    """Every record a run writes under `root`: 4 models and the pixel baseline x 2 datasets (each
    cell with a run per seed of `transfer_seeds`), detection with the default seed list [0],
    pretraining records with their curves, and the prepared object set for the pictures. With
    `paper_protocol`, protocols and provenance are the paper's (sizes included)."""
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump({"transfer": {"seeds": list(transfer_seeds)},
                                      **({} if detection_seeds == (0,) else {"detection": {"seeds": list(detection_seeds)}})}))
    _images(root, names[0])
    split = {"total": 100, "per_class": {}}
    dump(root / "records/prepare.json", {
        "object": {"name": names[0], "classes": 10, "train": split, "val": split},
        "transfer": {"name": names[1], "classes": 10, "train": split, "val": split},
        "detection": {"name": names[2], "classes": 10, "trainval": {"images": 30}, "test": {"images": 10}}})
    sizes = {"object": (1_281_167, 50_000), "transfer": (2_448_873, 20_500)} if paper_protocol else \
        {"object": (100, 100), "transfer": (100, 100)}

    recipe = NETWORKS[network_of(arch) or "resnet50"] if paper_protocol else RECIPE

    def provenance(model):
        if paper_protocol:
            return paper_provenance(model, arch=arch, recipe=recipe)
        return paper_provenance(model, arch=arch, dataset=names[0], train_images=100, crop=28, epochs={"ir": 4, "la": 8})

    for stage, model, knn, losses in (("pretrain_ia", "ir", 70.0, (8.0, 7.0)), ("pretrain_la", "la", 75.0, (2.0, 1.5, 1.25)),
                                      ("supervised", "supervised", 80.0, (2.3, 1.1))):
        summary = {"model": model, "stage": stage, "epochs": 4, "knn_top1_init": 60.0, "final_knn_top1": knn,
                   "final_loss": 1.25, "history": _history(losses)}
        if stage == "pretrain_la":
            summary.update(final_cluster_nmi=0.4475, final_cluster_singleton_fraction=0.0017,
                           views={"clusters": [{"cluster": 3, "size": 12, "purity": 91.7, "majority": 2,
                                                "members": list(range(8))}]},
                           cost={"wall_seconds": 3725.0, "train_seconds": 7300.0, "peak_rss_mb": 2048.0,
                                 "peak_gpu_mb": None})
        dump(root / f"records/{stage}.json", summary)
    for model in (*MODELS, "pixels"):
        for d_index, dataset in enumerate(("object", "transfer")):
            layers = ("pixels",) if model == "pixels" else LAYERS
            runs = [{"seed": seed, "linear": {layer: {m: linear_value(model, dataset, i, m, seed) for m in OFFSET}
                                              for i, layer in enumerate(layers)},
                     "per_class": {layer: [50.0 + c for c in range(10)] for layer in layers}}
                    for seed in transfer_seeds]
            knn = {"pixels": 30.0} if model == "pixels" else {"embedding": BASE[model] + 3.0, "conv5": BASE[model] + 4.0}
            dump(root / f"records/transfer/{model}-{dataset}.json", {
                "model": model, "dataset": dataset, "dataset_name": names[d_index],
                "arch": "none" if model == "pixels" else arch, "seeds": list(transfer_seeds), "runs": runs,
                "epochs": 10, "knn_k": 200, "feature_dims": {layer: 512 for layer in layers}, "knn": knn,
                "classes": [f"class {i}" for i in range(10)],
                "protocol": readout_protocol(dataset, names[d_index], *sizes[dataset], recipe=recipe),
                "provenance": [] if model == "pixels" else provenance(model),
                "views": _views(model) if dataset == "object" else {}})
        if model == "pixels" or not detection_seeds:
            continue
        dump(root / f"records/detection/{model}-seed0.json", {
            "model": model, "seed": 0, "arch": arch, "dataset_name": names[2], "AP50": AP50[model],
            "AP": AP50[model] / 2, "AP75": AP50[model] / 4,
            "protocol": detection_protocol(detection_sets) if paper_protocol else
            detection_protocol([["VOC2007", "trainval"]], 30, 10) | {"max_iter": 100},
            "provenance": provenance(model), "classes": [f"class {i}" for i in range(10)], "views": {},
            "cost": {"wall_seconds": 42.0, "peak_rss_mb": 1500.0, "peak_gpu_mb": 900.0}})
    return params


def rows_by_key(path: Path) -> dict[tuple, dict]:
    with path.open(newline="") as f:
        return {(r["model"], r["task"], r["dataset"], r["layer"], r["metric"]): r for r in csv.DictReader(f)}


@pytest.fixture
def toy_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return write_run(tmp_path)


def test_results_csv_has_exact_columns_mean_over_seeds_and_no_paper_for_other_datasets(toy_run, tmp_path):
    written = report.run(toy_run, out=Path("reports"))
    assert [p.name for p in written] == ["results.md", "results.csv", "readout.png", "pretraining.png",
                                         "detection.png", "per_class.png", "retrieval.png", "maps.png",
                                         "clusters.png"]
    with open("reports/results.csv", newline="") as f:
        assert next(csv.reader(f)) == ["model", "task", "dataset", "layer", "metric", "value", "paper"]
    rows = rows_by_key(Path("reports/results.csv"))
    # 4 networks x 2 datasets x 5 layers x 4 metrics, the pixel baseline's one "layer", kNN, detection
    assert len(rows) == 2 * 4 * 5 * 4 + 2 * 4 + 2 * 4 * 2 + 2 + 4 * 3
    assert rows[("pixels", "linear", "fashion_mnist", "pixels", "top1")]["value"] == "5.5"
    assert rows[("pixels", "knn", "mnist_5k", "pixels", "top1")]["value"] == "30"
    # la on the object set, conv5 (index 4), 10-crop: seeds 0 and 1 -> 59.0 and 60.0
    assert rows[("la", "linear", "fashion_mnist", "conv5", "top1_10crop")]["value"] == "59.5"
    assert rows[("ir", "linear", "mnist_5k", "conv1", "top5")]["value"] == "55.5"
    assert rows[("supervised", "knn", "mnist_5k", "embedding", "top1")]["value"] == "73"
    assert rows[("random", "detection", "synthetic_voc", "", "AP75")]["value"] == "5"
    assert all(r["paper"] == "" for r in rows.values())


def test_results_md_says_not_comparable_why_and_shows_mean_std_n(toy_run):
    report.run(toy_run, out=Path("reports"))
    md = Path("reports/results.md").read_text()
    assert "NOT comparable with the paper's" in md and "`fashion_mnist`" in md and "`resnet18`" in md
    # it opens with what this run shows: a row per model, then the gaps, with the pretraining noise unmeasured
    assert md.index("## This run's models") < md.index("## The paper's table") < md.index("## Why not comparable")
    assert ("| **LA** | Local Aggregation | resnet18 | IR 4 + LA 8 | 53.00 | 58.50 ± 0.71 (conv5) | 58.50 ± 0.71 | "
            "63.50 ± 0.71 (conv5) | 60.00 |") in md
    assert "| **raw pixels** | none (raw pixels) | — | — | 30.00 | 5.50 ± 0.71 | — | 10.50 ± 0.71 | — |" in md
    assert "| LA − IR | +10.00 | +10.00 | +10.00 | +10.00 | +5.00 |" in md
    assert "Pretraining noise: **not measured** for this run" in md
    # the paper's table sets no Fashion-MNIST number in an ImageNet row: one line per benchmark; a v1
    # ResNet-18 run is held against the paper's ResNet-18 recipe, whose numbers are not verified: no
    # paper column (the fixture's LA also has ResNet-50's lr drops: one more difference than IR)
    assert "The paper's ResNet-18 numbers are not verified from a primary source here" in md
    headline = next(line for line in md.splitlines() if line.startswith("| ImageNet linear top-1, conv5, 10-crop"))
    cells = [c.strip() for c in headline.strip("|").split("|")]
    assert cells == ["ImageNet linear top-1, conv5, 10-crop",
                     'not comparable (LA: 5 differences, IR: 4 differences; see "Why not comparable")']
    assert "| benchmark (ResNet-18) | this run |" in md and "paper LA" not in md
    # why not: one table, a row per key, a column per headline number (identical ones merged)
    assert ("| key | paper | LA: ImageNet conv5 10-crop, ImageNet conv5 centre crop | IR: ImageNet conv5 10-crop | "
            "LA: Places205 conv5 10-crop | IR: Places205 conv5 10-crop | LA: VOC07 AP50 | IR: VOC07 AP50 |") in md
    assert "| pretraining epochs (IR + LA) | 10 + 190 | 4 + 8 |  | 4 + 8 |  | 4 + 8 |  |" in md
    assert "| pretraining epochs (IR) | 200 |  | 4 |  | 4 |  | 4 |" in md  # the paper's IR baseline: 200 epochs
    assert ("| readout dataset | (per column) | fashion_mnist (paper imagenet) | fashion_mnist (paper imagenet) | "
            "mnist_5k (paper places205) | mnist_5k (paper places205) |  |  |") in md
    assert "readout epochs 10 instead of 70" not in md  # the fixture's readout follows the recipe
    for label in ("ImageNet linear top-1, conv5, centre crop", "Places205 linear top-1, conv5, 10-crop",
                  "VOC07 test detection AP50"):
        assert f"| {label} |" in md
    assert "## Why not comparable" in md and "## Deviations from the authors' code" in md
    assert "| layer | crop | la (n=2) | ir (n=2) | random (n=2) | supervised (n=2) |" in md
    assert "| conv5 | 10-crop | 59.50 ± 0.71 | 49.50 ± 0.71 | 19.50 ± 0.71 | 79.50 ± 0.71 |" in md
    assert "| la | 1 | 60.00 | 30.00 | 15.00 |" in md  # detection, one seed: no ± std
    # the set that ran is named (the synthetic scenes, not VOC07), with what a smoke-size run shows
    assert ("Trained on the trainval split of `synthetic_voc` (30 images), tested on the test split of "
            "`synthetic_voc` (10 images)") in md
    assert "this run shows that the stage runs end to end, not which backbone detects better" in md
    # captions say this run's numbers, not a claim the figure may contradict
    assert "AP50 in this run: LA 60.00, IR" in md and "(1 seed(s) each)" in md
    assert "keep the query's class" not in md and "Look for the gap" not in md
    assert "| `pretrain_la` | `records/pretrain_la.json` | 62.1 min | 2.03 h | 2,048 MB | n/a |" in md
    assert "| `pretrain_ia` | `records/pretrain_ia.json` | n/a | n/a | n/a | n/a |" in md
    assert "| NMI with the true classes | 0.448 |" in md
    assert "Source: `records/transfer/{la,ir,random,supervised}-object.json`." in md
    assert "- `records/transfer/random-transfer.json` (stage `transfer@random-transfer`)" in md
    assert "- `records/transfer/pixels-object.json` (stage `pixels@object`)" in md
    assert "| `fashion_mnist` | kNN top-1 | 30.00 | 13.00 | 43.00 | 53.00 | 73.00 |" in md  # deterministic: no ±
    assert "|  | best linear layer (centre crop) | 5.50 ± 0.71 (pixels) | 18.50 ± 0.71 (conv5) |" in md
    for name in ("readout", "pretraining", "detection"):
        assert f"(figures/{name}.png)" in md
        assert Path(f"reports/figures/{name}.png").read_bytes()[:8] == PNG_MAGIC


def test_source_paths_use_brace_notation_only_where_exact():
    assert brace_paths(["m/a-s0.json", "m/b-s0.json", "m/a-s1.json", "m/b-s1.json", "m/p.json"]) == [
        "m/{a,b}-{s0,s1}.json", "m/p.json"]
    assert brace_paths(["m/a-s0.json", "m/b-s0.json", "m/a-s1.json"]) == ["m/a-s0.json", "m/b-s0.json", "m/a-s1.json"]


FIGURE_NAMES = ("readout", "pretraining", "detection", "per_class", "retrieval", "maps", "clusters")


def test_figures_are_valid_pngs_embedded_with_a_caption_and_byte_identical_across_runs(toy_run):
    import re

    from localagg.report.markdown import FIGURE_TEXT

    report.run(toy_run, out=Path("a"))
    report.run(toy_run, out=Path("b"))
    md = Path("a/results.md").read_text()
    for name in FIGURE_NAMES:
        data = Path(f"a/figures/{name}.png").read_bytes()
        assert data[:8] == PNG_MAGIC and data == Path(f"b/figures/{name}.png").read_bytes(), name
        assert f"(figures/{name}.png)\n\n{FIGURE_TEXT[name][1]}" in md, name
    # the retrieval and per-class captions give the counts the figures draw, for every model
    found = re.search(r"Neighbours of the query's class over the queries shown: (.*?)\.", md)
    assert found and all(re.search(rf"{m} \d+ of \d+", found.group(1)) for m in ("LA", "IR", "random network", "raw pixels"))
    assert re.search(r"Lowest class per model: (raw pixels|LA): .+? [\d.]+% at (conv\d|pixels)", md)
    assert "detections.png" not in md  # the fixture's detector recorded no boxes: no empty picture


def test_the_papers_whole_protocol_fills_the_differences(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = write_run(tmp_path, names=("imagenet", "places205", "voc07"), arch="resnet50", transfer_seeds=(0,),
                       paper_protocol=True)
    report.run(params, out=Path("reports"))
    rows = rows_by_key(Path("reports/results.csv"))
    paper = {key: row["paper"] for key, row in rows.items() if row["paper"]}
    # the LA readout rows are comparable; the paper's IR numbers come from a 200-epoch IR, not the
    # 10-epoch warm start; the paper's APs from another detector
    assert paper == {
        ("la", "linear", "imagenet", "conv5", "top1_10crop"): "60.2",
        ("la", "linear", "imagenet", "conv5", "top1"): "58.8",
        ("la", "linear", "places205", "conv5", "top1_10crop"): "50.1",
    }
    md = Path("reports/results.md").read_text()
    # la ImageNet conv5 10-crop: 50 + 8 + 1 = 59.0 against 60.2
    assert ("| ImageNet linear top-1, conv5, 10-crop | 60.2 | 54.0 | LA 59.00 (-1.20 from the paper's); IR 49.00 "
            "(not comparable: IR 10 of 200 epochs) |") in md
    assert (f"| VOC07 test detection AP50 | 69.1 | 65.4 | LA 60.00 (not comparable: {DETECTOR_REASON}); IR 55.00 "
            f"(not comparable: IR 10 of 200 epochs; {DETECTOR_REASON}) |") in md
    assert "Trained on VOC07 trainval (5,011 images), tested on VOC07 test (4,952 images)" in md


def test_a_full_ir_baseline_is_compared_with_the_papers_ir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = write_run(tmp_path, names=("imagenet", "places205", "voc07"), arch="resnet50", transfer_seeds=(0,),
                       paper_protocol=True)
    for path in Path("records").rglob("ir-*.json"):
        _edit(str(path), lambda d: d.update(provenance=paper_provenance("ir", epochs={"ir": 200})))
    report.run(params, out=Path("reports"))
    assert rows_by_key(Path("reports/results.csv"))[("ir", "linear", "imagenet", "conv5", "top1_10crop")]["paper"] == "54"


def test_community_voc07_12_training_is_not_subtracted_from_the_papers_voc07(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = write_run(tmp_path, names=("imagenet", "places205", "voc07"), arch="resnet50", transfer_seeds=(0,),
                       paper_protocol=True, detection_sets=[["VOC2007", "trainval"], ["VOC2012", "trainval"]])
    report.run(params, out=Path("reports"))
    assert rows_by_key(Path("reports/results.csv"))[("la", "detection", "voc07", "", "AP50")]["paper"] == ""
    md = Path("reports/results.md").read_text()
    assert (f"| VOC07 test detection AP50 | 69.1 | 65.4 | LA 60.00 (not comparable: {DETECTOR_REASON}; trained on "
            "VOC07+12 trainval instead of the paper's VOC07 trainval); IR") in md
    assert "Trained on VOC07+12 trainval" in md


def _both_stages(edit):
    def apply(d):
        for stage in d["provenance"]:
            edit(stage)
    return apply


@pytest.mark.parametrize("edit, reason", [
    (lambda d: d["provenance"][0].update(train_images=40), "IR: 40 of 1,281,167 training images"),
    (_both_stages(lambda s: s.update(train_images=40)), "40 of 1,281,167 training images"),  # said once
    (lambda d: d["provenance"][1].update(epochs_done=1), "IR + LA 10 + 1 of 10 + 190 epochs"),
    (lambda d: d["provenance"][1]["config"].update(num_clusters=1000),
     "LA: pretrain_la.num_clusters 1,000 instead of 30,000"),
    # every stage of the provenance is checked, not only the first
    (lambda d: d["provenance"][1]["augment"].update(crop_size=96), "LA: 96 instead of 224 px"),
    (lambda d: d["provenance"][1].update(train_images=100_000), "LA: 100,000 of 1,281,167 training images"),
    # a key the record does not hold is a difference
    (lambda d: [d["provenance"][1]["config"].pop(k) for k in ("k", "num_clusters")],
     "LA: pretrain_la.k not recorded (the paper's 4,096)"),
    (lambda d: d["provenance"][1]["config"].update(lr_gamma=0.5), "LA: pretrain_la.lr_gamma 0.5 instead of 0.1"),
    # torchvision's own batch-norm momentum instead of TF's decay 0.997
    (_both_stages(lambda s: s.update(bn_momentum=0.1)), "model.bn_momentum 0.1 instead of 0.003"),
    (lambda d: d["protocol"]["readout"].update(epochs=1), "readout epochs 1 instead of 70"),
    (lambda d: d["protocol"]["readout"].update(ten_crop=False), "readout ten_crop false instead of true"),
    (lambda d: d["protocol"]["readout"].update(standardize=True), "readout standardize true instead of false"),
    (lambda d: d["protocol"]["readout"].pop("pool_rule"), "readout pool_rule not recorded (the paper's official)"),
    (lambda d: d["protocol"].update(val_images=10), "readout on 10 of 50,000 val images"),
])
def test_any_difference_in_the_protocol_makes_a_row_not_comparable(tmp_path, monkeypatch, edit, reason):
    monkeypatch.chdir(tmp_path)
    params = write_run(tmp_path, names=("imagenet", "places205", "voc07"), arch="resnet50", transfer_seeds=(0,),
                       paper_protocol=True)
    _edit("records/transfer/la-object.json", edit)
    report.run(params, out=Path("reports"))
    assert rows_by_key(Path("reports/results.csv"))[("la", "linear", "imagenet", "conv5", "top1_10crop")]["paper"] == ""
    headline = next(line for line in Path("reports/results.md").read_text().splitlines()
                    if line.startswith("| ImageNet linear top-1, conv5, 10-crop"))
    assert f"(not comparable: {reason}" in headline


@pytest.mark.parametrize("missing, fix", [
    ("records/transfer/ir-transfer.json", "dvc repro transfer@ir-transfer"),
    ("records/transfer/pixels-object.json", "dvc repro pixels@object"),
    ("records/pretrain_la.json", "dvc repro pretrain_la"),
    ("records/detection/la-seed0.json", "dvc repro detection@la-0"),
])
def test_missing_input_names_the_file_and_the_stage_to_run(toy_run, missing, fix):
    Path(missing).unlink()
    with pytest.raises(UserError) as err:
        report.run(toy_run, out=Path("reports"))
    assert str(err.value) == f"{missing} does not exist: run `{fix}`."
    assert not Path("reports").exists()


def test_several_missing_files_are_listed_in_one_error(toy_run):
    Path("records/supervised.json").unlink()
    Path("records/transfer/la-object.json").unlink()
    with pytest.raises(UserError, match=r"2 files the report needs do not exist: records/supervised.json "
                                        r"\(`dvc repro supervised`\); records/transfer/la-object.json "
                                        r"\(`dvc repro transfer@la-object`\)"):
        report.run(toy_run, out=Path("reports"))


def _edit(path: str, fn) -> None:
    data = json.loads(Path(path).read_text())
    fn(data)
    Path(path).write_text(json.dumps(data))


@pytest.mark.parametrize("path, edit, message", [
    ("records/transfer/la-object.json", lambda d: d["runs"][1]["linear"]["conv3"].pop("top5"),
     "records/transfer/la-object.json: missing key linear.conv3.top5"),
    ("records/transfer/la-object.json", lambda d: d.update(seeds=[0]),
     "records/transfer/la-object.json holds readout seeds [0], transfer.seeds is [0, 1]"),
    ("records/pretrain_ia.json", lambda d: d.pop("final_loss"), "records/pretrain_ia.json: missing key final_loss"),
    ("records/detection/ir-seed0.json", lambda d: d.update(AP="high"),
     "records/detection/ir-seed0.json: AP should be a finite number, got 'high'"),
    ("records/detection/ir-seed0.json", lambda d: d.update(AP=float("nan")),
     "records/detection/ir-seed0.json: AP should be a finite number, got nan"),
    ("records/transfer/la-object.json", lambda d: d["runs"][0]["linear"]["conv2"].update(top1=250.0),
     "records/transfer/la-object.json: linear.conv2.top1 = 250.0 is not a percentage in [0, 100]"),
    ("records/transfer/random-transfer.json", lambda d: d.update(dataset_name="places205"),
     "metrics files of the same evaluation disagree on dataset or architecture"),
])
def test_malformed_metrics_name_the_file_and_key(toy_run, path, edit, message):
    _edit(path, edit)
    with pytest.raises(UserError) as err:
        report.run(toy_run, out=Path("reports"))
    assert str(err.value).startswith(message) and path in str(err.value)
    assert not Path("reports").exists()


def test_a_record_copied_into_another_slot_is_refused(toy_run):
    Path("records/transfer/la-object.json").write_text(Path("records/transfer/ir-object.json").read_text())
    Path("records/pretrain_la.json").write_text(Path("records/pretrain_ia.json").read_text())
    with pytest.raises(UserError) as err:
        report.run(toy_run, out=Path("reports"))
    assert "records/transfer/la-object.json: model 'ir' (expected 'la')" in str(err.value)
    assert "records/pretrain_la.json: model 'ir' (expected 'la'), stage 'pretrain_ia' (expected 'pretrain_la')" \
        in str(err.value)
    assert not Path("reports").exists()


def test_invalid_json_names_the_file(toy_run):
    Path("records/transfer/la-object.json").write_text('{"model": "la",')
    with pytest.raises(UserError, match=r"records/transfer/la-object.json is not valid JSON .*"
                                        r"rerun `dvc repro transfer@la-object`"):
        report.run(toy_run, out=Path("reports"))


def test_bad_seed_list_is_a_user_error(toy_run):
    toy_run.write_text(yaml.safe_dump({"transfer": {"seeds": [0, 0]}}))
    with pytest.raises(UserError, match="transfer.seeds should be a non-empty list of distinct non-negative integers"):
        report.run(toy_run, out=Path("reports"))


def test_cli_missing_metrics_exits_2_with_one_line(toy_run):
    Path("records/prepare.json").unlink()
    result = CliRunner().invoke(app, ["report", "--params", str(toy_run)])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert result.output.strip() == "error: records/prepare.json does not exist: run `dvc repro prepare`."


def test_compare_table_from_dvc_exp_show(tmp_path):
    written = report.compare(tmp_path / "params.yaml", exp_json=FIXTURE, out=tmp_path / "reports")
    assert [p.name for p in written] == ["compare.md", "compare.csv"]  # no seed sweep: no seed record
    with (tmp_path / "reports" / "compare.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    # the params that differ, then every model's headline numbers (the report's: fresh-feature kNN)
    assert list(rows[0]) == ["name", "rev", "baseline", "pretrain_la.k", "pretrain_la.num_clusters",
                             "pretrain_la.num_kmeans", "ir_knn", "la_knn", "ir_object_best", "la_object_best",
                             "ir_object_conv5", "la_object_conv5", "la_transfer_best", "la_AP50"]
    got = {(r["name"], r["rev"]): r for r in rows}
    assert list(got) == [("workspace", "workspace"), ("main", "b019b48"), ("k512", "b889b68"),
                         ("clusters100", "ff40067"), ("", "c6edb3c")]
    assert got[("k512", "b889b68")] == {
        "name": "k512", "rev": "b889b68", "baseline": "b019b48", "pretrain_la.k": "512",
        "pretrain_la.num_clusters": "300", "pretrain_la.num_kmeans": "5", "ir_knn": "66", "la_knn": "78",
        "ir_object_best": "78", "la_object_best": "85.5", "ir_object_conv5": "77", "la_object_conv5": "84.5",
        "la_transfer_best": "90.5", "la_AP50": "45"}
    assert got[("clusters100", "ff40067")]["la_knn"] == "76"  # not the bank monitor's 71
    assert got[("", "c6edb3c")]["pretrain_la.num_clusters"] == "200"
    md = (tmp_path / "reports" / "compare.md").read_text()
    assert "| k512 | b889b68 | b019b48 | 512 | 300 | 5 |" in md
    # one table per headline number, a column per model
    assert "## best layer linear top-1 (centre crop), object set\n\n| run | IR | LA |" in md
    assert "| k512 | 78.00 | 85.50 |" in md and "transfer.seeds" not in md


def test_compare_without_experiments_or_outside_a_dvc_repo_is_a_user_error(tmp_path, monkeypatch):
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    with pytest.raises(UserError, match="no DVC experiments to compare"):
        report.compare(tmp_path / "params.yaml", exp_json=empty, out=tmp_path)
    with pytest.raises(UserError, match="not inside of a DVC repository"):
        report.compare(tmp_path / "params.yaml", out=tmp_path)
    monkeypatch.setattr(report.shutil, "which", lambda name: None)
    monkeypatch.setattr(report.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match="dvc is not installed"):
        report.compare(tmp_path / "params.yaml", out=tmp_path)


@pytest.mark.parametrize("edit, reason", [
    (lambda d: d["protocol"].update(proposals_train=300), "detection proposals_train 300 instead of 2,000"),
    (lambda d: d["protocol"].update(batch_size_per_image=128), "detection batch_size_per_image 128 instead of 512"),
    (lambda d: d["protocol"].pop("pooler_resolution"), "detection pooler_resolution not recorded (the paper's 14)"),
])
def test_a_detection_protocol_key_that_differs_is_named(tmp_path, monkeypatch, edit, reason):
    monkeypatch.chdir(tmp_path)
    params = write_run(tmp_path, names=("imagenet", "places205", "voc07"), arch="resnet50", transfer_seeds=(0,),
                       paper_protocol=True)
    _edit("records/detection/la-seed0.json", edit)
    report.run(params, out=Path("reports"))
    headline = next(line for line in Path("reports/results.md").read_text().splitlines()
                    if line.startswith("| VOC07 test detection AP50"))
    assert reason in headline, headline


def test_only_the_authors_detector_is_set_against_the_papers_ap(tmp_path, monkeypatch):
    """The rule can pass: a record of the authors' tf-faster-rcnn with the recipe's protocol is
    subtracted from 69.1 (no stage here writes one; the detector is what decides)."""
    monkeypatch.chdir(tmp_path)
    params = write_run(tmp_path, names=("imagenet", "places205", "voc07"), arch="resnet50", transfer_seeds=(0,),
                       paper_protocol=True)
    _edit("records/detection/la-seed0.json", lambda d: d["protocol"].update(detector="tf-faster-rcnn"))
    report.run(params, out=Path("reports"))
    assert rows_by_key(Path("reports/results.csv"))[("la", "detection", "voc07", "", "AP50")]["paper"] == "69.1"


def test_a_loss_that_grew_is_flagged_and_the_deviations_say_whether_the_run_had_the_recipe(tmp_path, monkeypatch):
    """A supervised loss of 63.2 for a first epoch's 1.4 is named in the pretraining section;
    a shrunk run's Deviations do not open by saying it used the whole recipe."""
    monkeypatch.chdir(tmp_path)
    params = write_run(tmp_path)
    _edit("records/supervised.json", lambda d: d.update(final_loss=63.2, history=[{**d["history"][0], "loss": 1.4},
                                                                                 *d["history"][1:]]))
    report.run(params, out=Path("reports"))
    md = Path("reports/results.md").read_text()
    assert "**Diverged:** supervised's final loss 63.2 is more than twice its first epoch's (1.4)." in md
    assert "This run did not use the paper's whole recipe" in md and "This run used every key" not in md



def test_a_readout_loss_that_exploded_is_named_beside_the_accuracies(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = write_run(tmp_path)
    _edit("records/transfer/ir-object.json",
          lambda d: d["runs"][0].update(losses={"conv5": [1.2, 1.5e7], "conv4": [1.3, 0.9]}))
    report.run(params, out=Path("reports"))
    md = Path("reports/results.md").read_text()
    assert "**Diverged readouts**" in md and "ir object set seed 0 conv5: 1.5e+07 (first epoch 1.2)" in md
    assert "conv4: 0.9" not in md  # a loss that fell is not flagged


def test_a_metrics_file_no_stage_writes_is_refused_before_the_report_is_written(toy_run):
    stray = Path("metrics/transfer/la-object-seed0.json")  # the layout before cells held every seed
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_text('{"top1": 77.15}\n')
    with pytest.raises(UserError, match=r"1 file\(s\) under metrics/ or records/ are written by no stage.*"
                                        r"metrics/transfer/la-object-seed0.json.*git rm"):
        report.run(toy_run, out=Path("strays"))
    assert not Path("strays").exists()
    stray.unlink()
    report.run(toy_run, out=Path("strays"))


def _import(root: Path, params: Path, name: str = "mine", published: dict | None = None) -> None:
    """An imported model `name` whose cells hold LA's numbers (the LA model re-saved elsewhere):
    its `external` entry, its import record and LA's transfer and detection records as its own."""
    data = yaml.safe_load(params.read_text())
    entry = {"path": "/elsewhere/checkpoint.pth.tar", "method": "MoCo v2", "epochs": 800,
             "published": published or {}}
    params.write_text(yaml.safe_dump({**data, "external": {name: entry}}))
    dump(root / f"records/import/{name}.json", {
        "model": name, "name": name, "objective": "imported", "source": entry["path"], "source_sha256": "ab" * 32,
        "format": "moco", "trunk_tensors": 120, "embedding": "the file's linear head (128 x 2048) is the embedding",
        "entry": {**entry, "format": "auto", "arch": None, "notes": None}})
    for path in [*root.glob("records/transfer/la-*.json"), *root.glob("records/detection/la-*.json")]:
        data = json.loads(path.read_text())
        dump(path.with_name(path.name.replace("la-", f"{name}-", 1)),
             {**data, "model": name, "provenance": [{"objective": "imported", "arch": data["arch"]}]})


def test_an_imported_model_is_a_column_beside_la_with_its_own_section(toy_run, tmp_path):
    _import(tmp_path, toy_run, published={"object_conv5_top1": 57.0})
    report.run(toy_run, out=Path("reports"))
    rows = rows_by_key(Path("reports/results.csv"))
    la = {k[1:]: r["value"] for k, r in rows.items() if k[0] == "la"}
    assert la and {k[1:]: r["value"] for k, r in rows.items() if k[0] == "mine"} == la
    md = Path("reports/results.md").read_text()
    assert "| dataset | features | raw pixels | la | ir | random | supervised | mine |" in md
    assert "| dataset | measure | raw pixels | random network | IR | LA | mine | supervised |" in md
    assert "| `mine` | MoCo v2 | 800 | moco | `checkpoint.pth.tar` (sha256 abababababab) |" in md
    # seeds 0 and 1 of conv5: 58 and 59; the toy run's readout is not the paper's: no difference
    assert ("| `mine` | object_conv5_top1 | 57.00 | 58.50 ± 0.71 (n=2) | not comparable: readout on fashion_mnist "
            "instead of imagenet") in md
    assert "`records/import/mine.json` (stage `import@mine`)" in md and "(stage `detection_external@mine-0`)" in md


def test_a_published_number_is_subtracted_under_the_papers_protocol_only(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = write_run(tmp_path, names=("imagenet", "places205", "voc07"), arch="resnet50", transfer_seeds=(0,),
                       paper_protocol=True)
    _import(tmp_path, params, published={"object_conv5_top1": 57.0, "object_knn_top1": 50.0, "detection_AP50": 61.5})
    report.run(params, out=Path("reports"))
    md = Path("reports/results.md").read_text()
    assert "| `mine` | object_conv5_top1 | 57.00 | 58.00 | +1.00 |" in md  # la's conv5 seed 0: 50 + 8
    assert "| `mine` | object_knn_top1 | 50.00 | 53.00 | +3.00 |" in md
    assert "| `mine` | detection_AP50 | 61.50 | 60.00 | -1.50 |" in md
    # the paper's own numbers stay LA's and IR's: the imported model has no "paper" cell
    assert not [r for k, r in rows_by_key(Path("reports/results.csv")).items() if k[0] == "mine" and r["paper"]]


def test_an_imported_models_missing_records_name_its_stages(toy_run, tmp_path):
    _import(tmp_path, toy_run)
    Path("records/import/mine.json").unlink()
    Path("records/transfer/mine-object.json").unlink()
    with pytest.raises(UserError) as err:
        report.run(toy_run, out=Path("reports"))
    assert "records/import/mine.json (`dvc repro import@mine`)" in str(err.value)
    assert "records/transfer/mine-object.json (`dvc repro transfer_external@mine-object`)" in str(err.value)
    assert not Path("reports").exists()


def test_a_leftover_prepare_metrics_file_is_refused(toy_run):
    """prepare writes records/prepare.json only; a metrics/prepare.json of an older layout is a stray."""
    Path("metrics").mkdir(exist_ok=True)
    Path("metrics/prepare.json").write_text('{"object": {}}\n')
    with pytest.raises(UserError, match=r"written by no stage.*metrics/prepare.json"):
        report.run(toy_run, out=Path("strays"))
    Path("metrics/prepare.json").unlink()
    report.run(toy_run, out=Path("strays"))


PAPER_NAMES = ("imagenet", "places205", "voc07")


def test_a_preact_resnet50_run_is_compared_with_the_papers_resnet50_numbers(tmp_path, monkeypatch):
    """paper-resnet50's backbone: the authors' own, so no backbone deviation."""
    monkeypatch.chdir(tmp_path)
    params = write_run(tmp_path, names=PAPER_NAMES, arch="preact_resnet50", transfer_seeds=(0,), paper_protocol=True)
    report.run(params, out=Path("reports"))
    rows = rows_by_key(Path("reports/results.csv"))
    assert rows[("la", "linear", "imagenet", "conv5", "top1_10crop")]["paper"] == "60.2"
    md = Path("reports/results.md").read_text()
    assert "| ImageNet linear top-1, conv5, 10-crop | 60.2 | 54.0 | LA 59.00 (-1.20 from the paper's); IR" in md
    assert "with `preact_resnet50` for its ResNet-50 rows" in md and "not verified" not in md
    assert "Backbone: torchvision's" not in md and "`localagg preset apply paper-resnet50`" in md


def test_a_v1_resnet50_run_is_compared_and_listed_with_the_backbone_deviation(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = write_run(tmp_path, names=PAPER_NAMES, arch="resnet50", transfer_seeds=(0,), paper_protocol=True)
    report.run(params, out=Path("reports"))
    assert rows_by_key(Path("reports/results.csv"))[("la", "linear", "imagenet", "conv5", "top1")]["paper"] == "58.8"
    md = Path("reports/results.md").read_text()
    deviations = md.split("## Deviations from the authors' code", 1)[1].split("\n## ", 1)[0]
    assert ("- Backbone: torchvision's ResNet-50 (v1) instead of the pre-activation ResNet-50 (v2, preact_resnet50)"
            in deviations and "`localagg preset apply paper-resnet50-v1`" in deviations)


def test_an_alexnet_run_has_no_paper_cell_and_says_its_numbers_are_not_verified(tmp_path, monkeypatch):
    """The paper's AlexNet numbers are not verified from a primary source: under AlexNet's whole
    recipe the run's numbers stand alone, without a difference from the paper's."""
    monkeypatch.chdir(tmp_path)
    params = write_run(tmp_path, names=PAPER_NAMES, arch="alexnet", transfer_seeds=(0,), paper_protocol=True)
    report.run(params, out=Path("reports"))
    assert all(row["paper"] == "" for row in rows_by_key(Path("reports/results.csv")).values())
    md = Path("reports/results.md").read_text()
    assert "The paper's AlexNet numbers are not verified from a primary source here" in md
    assert "from the paper's)" not in md and "| paper LA |" not in md and "paper AP50" not in md
    assert "| benchmark (AlexNet) | this run |" in md
    # AlexNet's recipe (its LA schedule, readout crops and weight decay) holds: LA's readout rows have nothing to say
    assert "| ImageNet linear top-1, conv5, 10-crop | LA 59.00; IR 49.00 (not comparable: IR 10 of 200 epochs) |" in md
    assert "`localagg preset apply paper-alexnet`" in md


def test_a_network_the_paper_has_no_row_for_is_not_comparable(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = write_run(tmp_path, names=PAPER_NAMES, arch="resnet50", transfer_seeds=(0,), paper_protocol=True)
    for path in Path("records").rglob("*.json"):
        if path.parent.name in ("transfer", "detection") and not path.name.startswith("pixels"):
            _edit(str(path), lambda d: d.update(arch="resnet101", provenance=[
                {**s, "arch": "resnet101"} for s in d["provenance"]]))
    report.run(params, out=Path("reports"))
    assert all(row["paper"] == "" for row in rows_by_key(Path("reports/results.csv")).values())
    md = Path("reports/results.md").read_text()
    assert "The paper has no `resnet101` row" in md and "not comparable: the paper has no resnet101 row" in md


def test_a_run_without_detection_cells_is_reported_without_a_detection_section(tmp_path, monkeypatch):
    """paper-alexnet and paper-vgg16 set detection.seeds: [] (no C4 detector): no detection
    record is asked for, and the report says detection did not run."""
    monkeypatch.chdir(tmp_path)
    params = write_run(tmp_path, names=PAPER_NAMES, arch="alexnet", transfer_seeds=(0,), paper_protocol=True,
                       detection_seeds=())
    assert not Path("records/detection").exists()
    report.run(params, out=Path("reports"))
    rows = rows_by_key(Path("reports/results.csv"))
    assert rows and not any(key[1] == "detection" for key in rows)
    md = Path("reports/results.md").read_text()
    assert "No detection cells ran (detection.seeds: [])" in md


def test_each_network_lists_its_own_departures_from_its_code():
    from localagg.report.paper import deviations

    vgg, alexnet, resnet = deviations("vgg16"), deviations("alexnet"), deviations("preact_resnet50")
    assert any(d.startswith("Readout pooling: the TF code's get_resnet_all_layers transposes") for d in vgg)
    assert any(d.startswith("Weight decay: the TF code decays") for d in alexnet)
    assert not any(d.startswith(("Readout pooling", "Weight decay", "Backbone")) for d in resnet)
    assert any(d.startswith("Backbone: torchvision's ResNet-50 (v1)") for d in deviations("resnet50"))
