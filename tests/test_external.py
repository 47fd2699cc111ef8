"""Imported models (the `external` params section): the entry's checks before anything runs,
the stage `import@<name>` and what the evaluations then read. The whole path through DVC and
the report runs in test_dvc_pipeline.py; the formats themselves in test_foreign.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision

from tests.test_cli import _assert_user_error, localagg, write_params


def _torchvision_file(path: Path, arch: str = "resnet18") -> torch.nn.Module:
    torch.manual_seed(0)
    net = getattr(torchvision.models, arch)(weights=None).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return net


def _with_entries(tmp_path, **entries) -> Path:
    return write_params(tmp_path, lambda p: p.update(external=entries, model={**p["model"], "stem": "imagenet"}))


@pytest.mark.parametrize("entries, fragments", [
    ({"la": {"path": "x.pt"}}, ["external: 'la' is one of the pipeline's own models", "pick another name"]),
    ({"MoCo-v2": {"path": "x.pt"}}, ["'MoCo-v2' is not a usable name"]),
    ({"moco": {"path": "x.pt", "fromat": "moco"}}, ["external.moco.fromat: unknown key (did you mean format?)"]),
    ({"moco": {"path": "x.pt", "published": {"imagenet_top1": 60.6}}}, ["external.moco.published", "object_best_top1"]),
], ids=["a-built-in-name", "a-name-no-file-can-have", "a-misspelt-key", "an-unknown-published-key"])
def test_a_bad_entry_is_named_before_anything_runs(tmp_path, entries, fragments):
    _assert_user_error(localagg("check", "--params", str(_with_entries(tmp_path, **entries))), *fragments)


def test_check_lists_a_missing_file_and_an_architecture_the_run_does_not_evaluate(tmp_path):
    _torchvision_file(tmp_path / "r50.pth", "resnet18")
    params = _with_entries(tmp_path, gone={"path": str(tmp_path / "nowhere.pth")},
                           r50={"path": str(tmp_path / "r50.pth"), "arch": "resnet50"})
    proc = localagg("check", "--params", str(params))
    _assert_user_error(proc, "2 problem(s)", f"external.gone.path {tmp_path / 'nowhere.pth'} is not a file",
                       "external.r50.arch is resnet50, but the evaluations read model.arch = resnet18",
                       "dvc exp run -S model.arch=resnet50")


def test_the_import_stage_writes_the_model_and_its_record_and_the_evaluations_know_its_name(tmp_path):
    from localagg.evaluation.transfer import load_backbone
    from localagg.models.config import ModelConfig

    net = _torchvision_file(tmp_path / "elsewhere" / "resnet18.pth")  # a 1000-class fc: no embedding head
    params = _with_entries(tmp_path, tv={"path": str(tmp_path / "elsewhere" / "resnet18.pth"), "method": "supervised"})
    proc = localagg("transfer", "--model", "tv", "--dataset", "object", "--params", str(params), cwd=tmp_path)
    _assert_user_error(proc, "models/tv.pt does not exist: run `dvc repro import@tv` first")
    proc = localagg("import-entry", "tv", "--params", str(params), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "import tv: torchvision format, 120 trunk tensors" in proc.stderr
    record = json.loads((tmp_path / "records/import/tv.json").read_text())
    assert record["model"] == "tv" and record["format"] == "torchvision" and record["entry"]["method"] == "supervised"
    assert record["embedding_dim"] == 512 and "identity head" in record["embedding"]
    # the run's model.embedding_dim is 128; the imported model keeps its own 512-d embedding
    model = load_backbone(tmp_path / "models/tv.pt", ModelConfig(arch="resnet18", stem="imagenet", embedding_dim=128)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        pooled = torch.flatten(net.avgpool(net.layer4(net.layer3(net.layer2(net.layer1(
            net.maxpool(net.relu(net.bn1(net.conv1(x))))))))), 1)
        assert torch.allclose(model.head(model.pooled(x)), pooled, atol=1e-5)
    unknown = localagg("import-entry", "nope", "--params", str(params), cwd=tmp_path)
    _assert_user_error(unknown, "external has no entry 'nope' (entries: tv)")
