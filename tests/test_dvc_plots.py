"""`dvc plots show`: every plot of dvc.yaml reads files its stages write, and draws one colour
per model (the report's), named as the report names it, one line style per revision, the
learning rate as steps; LA's curves continue IR's epochs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
DVC = Path(sys.executable).parent / "dvc"
PLOTS = yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]
COLOURS = {"LA": "#d62728", "IR": "#1f77b4", "random network": "#7f7f7f", "supervised": "#2ca02c"}  # figures.COLORS


def _definitions() -> dict[str, dict]:
    return {name: spec for entry in PLOTS for name, spec in entry.items()}


def test_every_plot_reads_a_column_of_a_file_its_stage_writes_with_a_committed_template():
    from dvc.repo import Repo

    with Repo(str(REPO)) as repo:
        outs = {str(out.def_path) for stage in repo.index.stages for out in stage.outs}
    for name, spec in _definitions().items():
        assert (REPO / ".dvc" / "plots" / f"{spec['template']}.json").is_file(), name
        for file, column in spec["y"].items():
            assert any(file.startswith(out + "/") for out in outs), (name, file)  # a stage's dvclive folder
            header = (REPO / file).read_text().splitlines()[0].split("\t")  # the committed run's curve
            assert header == ["step", column], (name, file, header)
    # the curves the brief asked for: LA's clusters against the classes
    assert set(_definitions()["LA clusters"]["y"].values()) == {"cluster_nmi", "cluster_purity"}


def _tsv(path: Path, column: str, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("step\t" + column + "\n" + "".join(f"{s}\t{v}\n" for s, v in rows))


FILES = list(dict.fromkeys(file for spec in _definitions().values() for file in spec["y"]))
POINTS = {file: n + 2 for n, file in enumerate(FILES)}  # a synthetic curve's points: its line says its file


@pytest.fixture(scope="module")
def shown(tmp_path_factory) -> dict[str, dict]:
    """{plot: its Vega-Lite spec} of `dvc plots show --json` in a copy of the pipeline's
    definitions and templates, over synthetic curves of POINTS points."""
    root = tmp_path_factory.mktemp("plots")
    for rel in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / rel, root / rel)
    subprocess.run([str(DVC), "init", "--no-scm", "-q"], cwd=root, check=True)
    shutil.copytree(REPO / ".dvc" / "plots", root / ".dvc" / "plots", ignore=shutil.ignore_patterns("*.html"))
    for spec in _definitions().values():
        for file, column in spec["y"].items():
            _tsv(root / file, column, [(s, 0.5 + 0.1 * s if column != "lr" else 0.03 / 10 ** (s // 2))
                                       for s in range(1, POINTS[file] + 1)])
    out = subprocess.run([str(DVC), "plots", "show", "--json"], cwd=root, capture_output=True, text=True, check=True)
    return {name: found[0]["content"] for name, found in json.loads(out.stdout)["data"].items()}


def _scene(spec: dict) -> dict:
    """What Vega draws: {"legend": {label: colour}, "lines": {points: (colour, interpolation)}, "width"}."""
    import vl_convert

    graph = vl_convert.vegalite_to_scenegraph(spec, vl_version="5.21")
    legend, lines = {}, {}

    def walk(node: dict, in_colour_legend: bool) -> None:
        items = [i for i in node.get("items", []) if isinstance(i, dict)]
        if node.get("role") == "legend" and not legend:  # the first legend: the colours
            in_colour_legend = True
        if node.get("marktype") == "line" and node.get("role") == "mark":
            lines[len(items)] = (items[0]["stroke"], items[0].get("interpolate", "linear"))
        if in_colour_legend and node.get("role") == "legend-symbol":
            legend.setdefault("_pending", []).append(items[0]["fill"])
        if in_colour_legend and node.get("role") == "legend-label":
            legend[items[0]["text"]] = legend["_pending"].pop(0)
        for item in items:
            walk(item, in_colour_legend)

    walk(graph["scenegraph"], False)
    legend.pop("_pending", None)
    return {"legend": legend, "lines": lines, "width": graph["width"]}


def test_each_model_has_its_report_colour_and_name_in_every_plot(shown):
    expected = {
        "pretraining kNN top-1": ["IR", "LA", "supervised"],
        "pretraining learning rate": ["IR", "LA", "supervised"],
        "IR loss": ["IR"], "LA loss": ["LA"], "supervised loss": ["supervised"],
        "LA clusters": ["NMI", "purity"],
        "LA readout loss per layer, object set": ["conv1", "conv2", "conv3", "conv4", "conv5"],
        "conv5 readout loss per model, object set": ["LA", "IR", "random network", "supervised"],
        "detection loss per model": ["LA", "IR", "random network", "supervised"],
    }
    assert set(shown) == set(expected) == set(_definitions())
    for name, series in expected.items():
        scene = _scene(shown[name])
        assert sorted(scene["legend"]) == sorted(series), name
        assert len(set(scene["legend"].values())) == len(series), name  # a colour each
        # each file's line (POINTS[file] points) has the colour its name has in the legend
        assert {points: colour for points, (colour, _) in scene["lines"].items()} == {
            POINTS[file]: scene["legend"][label] for file, label in zip(_definitions()[name]["y"], series)}, name
        for label in set(series) & set(COLOURS):
            assert scene["legend"][label] == COLOURS[label], (name, label)
        assert scene["width"] < 700, name  # nothing pushed the chart wide (a long title or legend label)


def test_the_learning_rate_is_drawn_as_steps_and_the_losses_as_lines(shown):
    assert {i for _, i in _scene(shown["pretraining learning rate"])["lines"].values()} == {"step-before"}
    assert {i for _, i in _scene(shown["LA loss"])["lines"].values()} == {"linear"}


def test_revisions_differ_by_line_style_not_colour(shown):
    spec = shown["pretraining kNN top-1"]
    assert spec["encoding"]["strokeDash"]["field"] == "rev" and spec["encoding"]["color"]["field"] == "series"


def test_la_logs_its_curves_after_irs_epochs_and_records_its_own(tmp_path, monkeypatch):
    from stages import pretrain

    from .conftest import make_arrays_dataset

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LOCALAGG_NO_PROGRESS", "1")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["pretrain_ia"].update(epochs=2, batch_size=4, knn_k=5)
    params["pretrain_la"].update(epochs=2, batch_size=4, knn_k=5, k=8, num_clusters=4, num_kmeans=2, lr_drops=[])
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    make_arrays_dataset(tmp_path / "data/prepared/object", n_train=16, n_val=8)
    pretrain.run("pretrain_ia", tmp_path / "params.yaml")
    pretrain.run("pretrain_la", tmp_path / "params.yaml")

    def steps(stage: str, key: str) -> list[int]:
        rows = (tmp_path / f"dvclive/{stage}/plots/metrics/{key}.tsv").read_text().splitlines()[1:]
        return [int(row.split("\t")[0]) for row in rows]

    assert steps("pretrain_ia", "knn_top1") == [0, 1, 2] and steps("pretrain_ia", "loss") == [1, 2]
    # LA's start (the IR model's kNN) at IR's last epoch, then LA's epochs 1, 2 at 3, 4
    assert steps("pretrain_la", "knn_top1") == [2, 3, 4]
    assert steps("pretrain_la", "loss") == steps("pretrain_la", "cluster_nmi") == [3, 4]
    record = json.loads((tmp_path / "records/pretrain_la.json").read_text())
    assert [row["epoch"] for row in record["history"]] == [1, 2]  # the report's curves: LA's own epochs
    assert pretrain.curve_offset([]) == 0
