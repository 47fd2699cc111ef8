"""Published checkpoint layouts, written here from a torchvision ResNet in each format's exact
layout, convert to an EmbeddingNet that computes what the source network computes (float64,
max abs difference 0), and a crafted file of every format runs no code."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision

from localagg.errors import UserError
from localagg.models.foreign import FORMATS, convert, detect, extract
from localagg.runtime.untrusted import read_untrusted


def _source(arch="resnet18", seed=0):
    torch.manual_seed(seed)
    net = getattr(torchvision.models, arch)(weights=None).double().eval()
    for m in net.modules():  # non-trivial running statistics, so eval-mode batch norm is checked too
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return net


def _trunk(net) -> dict:
    return {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}


class LinearAverage(torch.nn.Module):
    """lemniscate.pytorch's memory object, as its ImageNet checkpoints pickle it."""

    def __init__(self, n=10, dim=128):
        super().__init__()
        self.register_buffer("memory", torch.randn(n, dim))
        self.register_buffer("params", torch.tensor([0.07, 0.5]))


class Evil:
    """A pickle that runs a command when loaded by an unrestricted unpickler."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _layout(fmt: str, net, head: torch.Tensor | None, extra=None) -> dict:
    """The checkpoint dict of `fmt` around `net`'s weights (`head`: a (D, C) linear head or None)."""
    trunk = _trunk(net)
    width = net.fc.in_features
    if fmt == "torchvision":
        state = dict(net.state_dict())
    elif fmt == "moco":
        mlp = head is None
        q = {**trunk, **({"fc.0.weight": torch.randn(width, width, dtype=torch.float64), "fc.0.bias": torch.zeros(width),
                          "fc.2.weight": torch.randn(128, width, dtype=torch.float64), "fc.2.bias": torch.zeros(128)}
                         if mlp else {"fc.weight": head, "fc.bias": torch.zeros(head.shape[0], dtype=torch.float64)})}
        sd = {f"module.encoder_q.{k}": v for k, v in q.items()}
        sd.update({f"module.encoder_k.{k}": v.clone() for k, v in q.items()})
        sd.update({"module.queue": torch.randn(128, 64), "module.queue_ptr": torch.zeros(1, dtype=torch.long)})
        state = {"epoch": 200, "arch": "resnet50", "state_dict": sd, "optimizer": {"state": {}, "param_groups": []}}
    elif fmt == "npid":
        sd = {f"module.{k}": v for k, v in {**trunk, "fc.weight": head, "fc.bias": torch.zeros(head.shape[0],
                                                                                          dtype=torch.float64)}.items()}
        state = {"epoch": 200, "arch": "resnet50", "state_dict": sd, "lemniscate": LinearAverage(), "best_prec1": 54.0}
    elif fmt == "vissl":
        heads = {"0.clf.0.weight": head, "0.clf.0.bias": torch.zeros(head.shape[0], dtype=torch.float64)}
        state = {"classy_state_dict": {"base_model": {"model": {
            "trunk": {f"_feature_blocks.{k}": v for k, v in trunk.items()}, "heads": heads}}}, "phase_idx": 399,
            "iteration": 1000}
    elif fmt == "mmselfsup":
        sd = {f"backbone.{k}": v for k, v in trunk.items()}
        sd.update({"neck.mlp.0.weight": torch.randn(width, width, dtype=torch.float64),
                   "neck.mlp.2.weight": torch.randn(128, width, dtype=torch.float64)})
        state = {"meta": {"epoch": 200, "mmselfsup_version": "0.11.0"}, "state_dict": sd}
    elif fmt == "hub":
        state = {f"module.{k}": v for k, v in trunk.items()}
        state.update({"module.projection_head.0.weight": torch.randn(width, width, dtype=torch.float64),
                      "module.projection_head.3.weight": torch.randn(128, width, dtype=torch.float64),
                      "module.prototypes.weight": torch.randn(300, 128, dtype=torch.float64)})
    else:
        raise AssertionError(fmt)
    if extra is not None:
        state["args"] = extra
    return state


WITH_HEAD = {"moco": True, "npid": True, "vissl": True}
FOREIGN = [f for f in FORMATS if f != "localagg"]


@pytest.mark.parametrize("fmt", FOREIGN)
def test_each_format_converts_to_the_network_it_was_saved_from(fmt, tmp_path):
    net = _source("resnet18")
    head = torch.randn(128, 512, dtype=torch.float64) if WITH_HEAD.get(fmt) else None
    path = tmp_path / f"{fmt}.pth"
    torch.save(_layout(fmt, net, head), path)
    read = read_untrusted(path)
    assert detect(read.state) == fmt
    found = extract(read.state, fmt)
    done = convert(found, "resnet18", "imagenet", 128, source=str(path))
    model = done.model.eval()
    x = torch.randn(3, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        net.fc = torch.nn.Identity()
        pooled = net(x)
        assert (model.pooled(x) - pooled).abs().max().item() == 0.0
        if head is not None:  # the file's linear head is the embedding
            assert model.embedding_dim == 128 and "linear head" in done.head
            assert torch.allclose(model(x), F.normalize(pooled @ head.T, dim=1), rtol=0, atol=1e-12)
        else:  # no head that fits: the embedding is the pooled feature itself
            assert model.embedding_dim == 512 and "identity head" in done.head
            assert (model(x) - F.normalize(pooled, dim=1)).abs().max().item() == 0.0


@pytest.mark.parametrize("fmt", FOREIGN)
def test_a_crafted_file_of_each_format_runs_no_code_and_still_gives_its_weights(fmt, tmp_path):
    marker = tmp_path / "ran"
    net = _source("resnet18", seed=1)
    head = torch.randn(128, 512, dtype=torch.float64) if WITH_HEAD.get(fmt) else None
    state = _layout(fmt, net, head, extra=Evil(marker))
    path = tmp_path / f"{fmt}.pth"
    torch.save(state, path)
    read = read_untrusted(path)
    assert not marker.exists()
    assert "posix.system" in read.opaque or "os.system" in read.opaque, read.opaque
    model = convert(extract(read.state, detect(read.state)), "resnet18").model
    assert torch.equal(model.trunk.conv1.weight, net.conv1.weight)
    assert not marker.exists()


def test_lemniscates_pickled_memory_object_is_read_as_an_inert_placeholder_with_its_tensors(tmp_path):
    net = _source()
    path = tmp_path / "npid.pth"
    torch.save(_layout("npid", net, torch.randn(128, 512, dtype=torch.float64)), path)
    read = read_untrusted(path)
    assert any(name.endswith("LinearAverage") for name in read.opaque), read.opaque
    assert read.state["best_prec1"] == 54.0


def test_a_file_of_another_architecture_names_the_one_it_is(tmp_path):
    path = tmp_path / "tv.pth"
    torch.save(_source("resnet18").state_dict(), path)
    found = extract(read_untrusted(path).state, "torchvision")
    with pytest.raises(UserError, match=r"the file's trunk is a resnet18, not a resnet50: set model.arch"):
        convert(found, "resnet50", source=str(path))
    del found.trunk["layer4.1.bn2.weight"]
    with pytest.raises(UserError, match=r"missing 1: layer4.1.bn2.weight"):
        convert(found, "resnet18", source=str(path))


def test_a_file_of_no_known_layout_and_a_truncated_file_are_clear_errors(tmp_path):
    path = tmp_path / "odd.pth"
    torch.save({"weights": {"a": torch.zeros(1)}}, path)
    with pytest.raises(UserError, match="no known checkpoint layout fits the file's keys"):
        detect(read_untrusted(path).state)
    good = tmp_path / "tv.pth"
    torch.save(_source().state_dict(), good)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(UserError, match="cannot be read as a torch checkpoint"):
        read_untrusted(cut)


def test_the_pipelines_own_export_converts_to_itself(tmp_path):
    from localagg.models.backbone import EmbeddingNet
    from localagg.runtime.checkpoint import save_export

    torch.manual_seed(0)
    net = EmbeddingNet("resnet18", "imagenet", 128).eval()
    save_export(tmp_path / "la.pt", net, "la")
    read = read_untrusted(tmp_path / "la.pt")
    assert detect(read.state) == "localagg"
    model = convert(extract(read.state, "localagg"), "resnet18").model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), net(x))


def test_the_import_command_says_what_it_found_and_writes_a_model_the_evaluations_read(tmp_path):
    import subprocess
    import sys

    from localagg.evaluation.transfer import load_backbone
    from localagg.models.config import ModelConfig

    net = _source()
    marker = tmp_path / "ran"
    torch.save(_layout("npid", net, torch.randn(128, 512, dtype=torch.float64), extra=Evil(marker)), tmp_path / "npid.pth")
    cmd = [sys.executable, "-m", "stages", "import", str(tmp_path / "npid.pth"), "--arch", "resnet18"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "npid format; 120 trunk tensors mapped onto resnet18" in proc.stderr
    assert "the file's linear head (128 x 512) is the embedding" in proc.stderr
    assert "LinearAverage" in proc.stderr and "system" in proc.stderr and not marker.exists()
    model = load_backbone(tmp_path / "models/npid.pt", ModelConfig(arch="resnet18", stem="imagenet", embedding_dim=128))
    assert torch.equal(model.trunk.conv1.weight, net.conv1.weight.float())
    wrong = subprocess.run([*cmd[:-1], "resnet50"], cwd=tmp_path, capture_output=True, text=True)
    assert wrong.returncode == 2 and "Traceback" not in wrong.stderr
    assert "the file's trunk is a resnet18, not a resnet50" in wrong.stderr


@pytest.mark.parametrize("content", [b"", b"<html><body>404 Not Found</body></html>\n", "half"],
                         ids=["empty", "an-html-page-saved-as-pt", "cut-in-half"])
def test_a_file_that_is_no_checkpoint_is_not_called_a_security_refusal(tmp_path, content):
    """A failed download or an interrupted copy says so, with the file's size; only a pickle that
    names a class outside the allow-list is 'could run code'."""
    from localagg.runtime import checkpoint

    path = tmp_path / "model.pt"
    if content == "half":
        torch.save({"model": torch.zeros(256)}, path)
        content = path.read_bytes()[: path.stat().st_size // 2]
    path.write_bytes(content)
    with pytest.raises(UserError) as err:
        checkpoint.load(path, "pretrained model")
    assert f"is truncated or not a torch checkpoint ({len(content):,} bytes;" in str(err.value)
    assert "could run code" not in str(err.value) and "weights_only" not in str(err.value)
    with pytest.raises(UserError, match="cannot be read as a torch checkpoint") as err:
        read_untrusted(path)
    assert "weights_only" not in str(err.value)
