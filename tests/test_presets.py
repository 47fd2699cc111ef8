"""Presets: applying each paper preset gives a params file whose every key of its network's recipe
is the paper's value, with no comment left from the values it replaced; presets ship with the
package."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ruamel.yaml import YAML

from localagg.report.paper import PRESETS, preset_recipe
from stages import presets
from stages.params import validate_all

REPO = Path(__file__).resolve().parent.parent


def _get(tree: dict, dotted: str):
    node = tree
    for part in dotted.split("."):
        node = node[part]
    return node


def _comments(path: Path) -> dict[str, str]:
    """{dotted key: its end-of-line comment} of a YAML file."""
    out: dict[str, str] = {}

    def walk(node, prefix):
        for key, value in node.items():
            dotted = f"{prefix}{key}"
            items = node.ca.items.get(key)
            token = items[2] if items and len(items) > 2 else None
            text = token.value.split("\n", 1)[0].strip() if token is not None else ""
            if text:
                out[dotted] = text
            if isinstance(value, dict):
                walk(value, dotted + ".")

    walk(YAML().load(path.read_text()), "")
    return out


def _leaves(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and not (prefix == "supervised." and key == "augment"):
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@pytest.fixture(params=sorted(PRESETS))
def applied(tmp_path, request):
    path = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", path)
    changed = presets.apply(request.param, path)
    return request.param, path, changed


def test_every_paper_preset_ships_and_every_preset_is_a_paper_network():
    assert set(presets.available()) == set(PRESETS)


def test_the_paper_preset_sets_every_key_of_its_networks_recipe(applied):
    name, path, _ = applied
    validate_all(path)  # what `localagg check` runs
    values = yaml.safe_load(path.read_text())
    recipe = preset_recipe(name)
    wrong = {key: (_get(values, key), paper) for key, (paper, _) in recipe.items() if _get(values, key) != paper}
    assert wrong == {}, "keys of the network's recipe with another value after applying the preset"
    preset = yaml.safe_load(presets.preset_path(name).read_text())
    assert set(recipe) <= set(_leaves(preset))


@pytest.mark.parametrize("name, arch, la, readout", [
    ("paper-resnet50", "preact_resnet50", (190, [142, 179], 10, 30000, 128), (70, [30, 60], 37, [16, 31], 1e-4)),
    ("paper-resnet50-v1", "resnet50", (190, [142, 179], 10, 30000, 128), (70, [30, 60], 37, [16, 31], 1e-4)),
    ("paper-resnet18", "preact_resnet18", (190, [150, 177], 10, 30000, 128), (70, [30, 60], 37, [16, 31], 1e-4)),
    ("paper-alexnet", "alexnet", (150, [109, 132], 3, 30000, 128), (65, [45, 55], 34, [24, 29], 0.0)),
    ("paper-vgg16", "vgg16", (158, [116, 138], 6, 10000, 256), (51, [11, 41], 27, [6, 21], 1e-4)),
])
def test_each_networks_schedule_is_the_tf_configs(name, arch, la, readout):
    """The values derived from la_final.json / la_trans_final.json step counts, written out."""
    r = {k: v for k, (v, _) in preset_recipe(name).items()}
    assert r["model.arch"] == arch and r["pretrain_ia.epochs"] == 10 and r["pretrain_ia.batch_size"] == 128
    assert (r["pretrain_la.epochs"], r["pretrain_la.lr_drops"], r["pretrain_la.num_kmeans"],
            r["pretrain_la.num_clusters"], r["pretrain_la.batch_size"]) == la
    assert (r["transfer.object.epochs"], r["transfer.object.lr_drops"], r["transfer.transfer.epochs"],
            r["transfer.transfer.lr_drops"], r["transfer.object.weight_decay"]) == readout
    assert r["transfer.transfer.weight_decay"] == readout[-1]
    point = "before_maxpool" if arch in ("alexnet", "vgg16") else "after_maxpool"
    assert r["transfer.object.conv1_point"] == r["transfer.transfer.conv1_point"] == point
    assert r["transfer.object.train_augment"] == ("resize_random_crop_flip" if arch == "alexnet" else "pretraining")


def test_after_apply_no_comment_is_left_from_a_replaced_value(applied):
    name, path, _ = applied
    preset_file = presets.preset_path(name)
    found, preset_comments = _comments(path), _comments(preset_file)
    preset_keys = set(_leaves(yaml.safe_load(preset_file.read_text()))) | {
        k for k in _comments(preset_file)}
    for key in preset_keys:
        assert found.get(key) == preset_comments.get(key), key
    leftover = {k: v for k, v in found.items() if k not in preset_keys}
    assert leftover == {}, "comments of the embedded default on keys the preset does not set"
    text = path.read_text()
    assert text.startswith("# localagg params: the paper's recipe") and "embedded default" not in text
    for stale in ("Fashion-MNIST", "full softmax", "stem and res2 frozen", "synthetic scenes"):
        assert stale not in text


def test_apply_reports_only_the_values_that_changed(applied):
    name, path, changed = applied
    keys = {key for key, _, _ in changed}
    assert {"model.arch", "pretrain_ia.bank_init", "pretrain_ia.num_negatives", "supervised.epochs",
            "detection.max_iter"} <= keys
    assert "pretrain_ia.lr" not in keys and "model.stem" not in keys  # the same value before and after
    assert dict((k, (o, n)) for k, o, n in changed)["model.arch"] == ("resnet18", PRESETS[name][1])
    assert presets.apply(name, path) == []  # applying it again changes nothing


def test_presets_ship_inside_the_package_and_the_cli_lists_them(tmp_path):
    assert presets.PRESET_DIR.parent == Path(presets.__file__).parent
    out = subprocess.run([sys.executable, "-m", "stages", "preset", "list"], capture_output=True, text=True,
                         cwd=tmp_path)
    assert out.returncode == 0
    listed = [line.split("\t", 1)[0] for line in out.stdout.splitlines()]
    assert sorted(listed) == sorted(PRESETS)


@pytest.mark.slow
def test_a_built_wheel_carries_the_presets(tmp_path):
    """Installed without -e (from a wheel), `preset list` must still find the presets."""
    import zipfile

    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                           str(tmp_path), str(REPO)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    wheel = next(tmp_path.glob("localagg-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert all(f"stages/presets/{name}.yaml" in names for name in PRESETS)
