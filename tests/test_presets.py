"""Presets: applying the paper's preset gives a params file whose every key of the paper's recipe
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

from localagg.report.paper import RECIPE
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


@pytest.fixture
def applied(tmp_path):
    path = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", path)
    changed = presets.apply("paper-resnet50", path)
    return path, changed


def test_the_paper_preset_sets_every_key_of_the_papers_recipe(applied):
    path, _ = applied
    validate_all(path)  # what `localagg check` runs
    values = yaml.safe_load(path.read_text())
    wrong = {key: (_get(values, key), paper) for key, (paper, _) in RECIPE.items() if _get(values, key) != paper}
    assert wrong == {}, "keys of the paper's recipe with another value after applying the preset"
    preset = yaml.safe_load(presets.preset_path("paper-resnet50").read_text())
    assert set(RECIPE) <= set(_leaves(preset))


def test_after_apply_no_comment_is_left_from_a_replaced_value(applied):
    path, _ = applied
    preset_file = presets.preset_path("paper-resnet50")
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
    path, changed = applied
    keys = {key for key, _, _ in changed}
    assert {"model.arch", "pretrain_ia.bank_init", "pretrain_ia.num_negatives", "supervised.epochs",
            "detection.max_iter"} <= keys
    assert "pretrain_ia.lr" not in keys and "model.stem" not in keys  # the same value before and after
    assert dict((k, (o, n)) for k, o, n in changed)["model.arch"] == ("resnet18", "resnet50")
    assert presets.apply("paper-resnet50", path) == []  # applying it again changes nothing


def test_presets_ship_inside_the_package_and_the_cli_lists_them(tmp_path):
    assert presets.PRESET_DIR.parent == Path(presets.__file__).parent
    out = subprocess.run([sys.executable, "-m", "stages", "preset", "list"], capture_output=True, text=True,
                         cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.startswith("paper-resnet50\t")


@pytest.mark.slow
def test_a_built_wheel_carries_the_presets(tmp_path):
    """Installed without -e (from a wheel), `preset list` must still find the presets."""
    import zipfile

    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                           str(tmp_path), str(REPO)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    wheel = next(tmp_path.glob("localagg-*.whl"))
    assert "stages/presets/paper-resnet50.yaml" in zipfile.ZipFile(wheel).namelist()
