"""The authors' TensorFlow checkpoint (format tf-la) imported into preact_resnet18.

A checkpoint with the exact variable names and shapes of the TF-official ResNet-18 v2 (as
model/resnet_model.py creates them under resnet_model/, random values), the LA memory bank and
training leftovers is written here with TensorFlow's own v1 Saver, imported through
`localagg import`, and the imported network's embedding and readout maps are checked against a
NumPy forward pass written from the TF code (NHWC, fixed / SAME padding, SAME max-pool,
inference batch norm), both in float64. Without TensorFlow (the optional extra `tf`) the tests
that need it are skipped with the reason; the missing-extra message is checked either way.
"""

from __future__ import annotations

import io
import os
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from localagg.errors import UserError
from tests.test_cli import _assert_user_error, localagg

N_BANK = 50
EPS = 1e-5  # _BATCH_NORM_EPSILON


def _tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    return pytest.importorskip("tensorflow", reason="TensorFlow, the optional extra `tf`, is not installed "
                                                    "(make setup-tf installs it)")


# --------------------------------------------------------------------------- the TF variables

def resnet_v2_variables(block_sizes=(2, 2, 2, 2), bottleneck=False, rng=None) -> dict[str, np.ndarray]:
    """The TF-official ResNet v2's variables in creation order (ImagenetModel, 128 classes):
    tf.layers names each conv2d / batch_normalization by how many of its kind came before."""
    rng = rng or np.random.default_rng(0)
    out: dict[str, np.ndarray] = {}
    count = {"conv2d": 0, "batch_normalization": 0}

    def name(kind):
        i = count[kind]
        count[kind] += 1
        return f"resnet_model/{kind}{f'_{i}' if i else ''}"

    def conv(k, c_in, c_out):
        std = np.sqrt(1.0 / (k * k * c_in))
        out[name("conv2d") + "/kernel"] = (rng.standard_normal((k, k, c_in, c_out)) * std).astype(np.float32)

    def bn(c):
        n = name("batch_normalization")
        out[n + "/gamma"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
        out[n + "/beta"] = rng.uniform(-0.2, 0.2, c).astype(np.float32)
        out[n + "/moving_mean"] = rng.uniform(-0.3, 0.3, c).astype(np.float32)
        out[n + "/moving_variance"] = rng.uniform(0.5, 2.0, c).astype(np.float32)

    conv(7, 3, 64)
    c_in = 64
    for i, n in enumerate(block_sizes):
        filters = 64 * 2 ** i
        c_out = filters * (4 if bottleneck else 1)
        for j in range(n):
            bn(c_in)
            if j == 0:
                conv(1, c_in, c_out)
            if bottleneck:
                conv(1, c_in, filters), bn(filters), conv(3, filters, filters), bn(filters), conv(1, filters, c_out)
            else:
                conv(3, c_in, filters), bn(filters), conv(3, filters, c_out)
            c_in = c_out
    bn(c_in)
    out["resnet_model/dense/kernel"] = (rng.standard_normal((c_in, 128)) / np.sqrt(c_in)).astype(np.float32)
    out["resnet_model/dense/bias"] = rng.uniform(-0.1, 0.1, 128).astype(np.float32)
    return out


def test_the_variable_set_is_resnet18_v2s():
    v = resnet_v2_variables()
    trunk = sum(a.size for k, a in v.items() if "dense" not in k and "moving" not in k)  # trainable
    assert (len(v), trunk, v["resnet_model/dense/kernel"].size + 128) == (91, 11_178_816, 65_664)
    assert "resnet_model/conv2d_20/kernel" in v and "resnet_model/batch_normalization_16/gamma" in v
    assert len(resnet_v2_variables((3, 4, 6, 3), bottleneck=True)) == 251


def _leftovers(v: dict[str, np.ndarray], rng) -> dict[str, np.ndarray]:
    """The LA run's bank and what training leaves beside the network."""
    bank = rng.standard_normal((N_BANK, 128)).astype(np.float32)
    return {"instance/memory_bank": bank / np.linalg.norm(bank, axis=1, keepdims=True),
            "instance/cluster_labels": np.zeros((1, N_BANK), np.int64), "instance/all_labels": np.arange(N_BANK),
            "global_step": np.int64(1901710),
            "resnet_model/conv2d/kernel/Momentum": np.zeros_like(v["resnet_model/conv2d/kernel"])}


def write_tf1_checkpoint(prefix: Path, variables: dict[str, np.ndarray]) -> None:
    """Saved as the authors' code saved: tf.compat.v1 variables in a graph, tf.compat.v1.train.Saver."""
    tf = _tf()
    with tf.Graph().as_default():
        feeds, tf_vars, assigns = {}, {}, []
        for name, value in variables.items():
            var = tf.compat.v1.get_variable(name, shape=value.shape, dtype=tf.as_dtype(value.dtype),
                                            initializer=tf.compat.v1.zeros_initializer(), use_resource=False)
            ph = tf.compat.v1.placeholder(var.dtype.base_dtype, value.shape)
            assigns.append(tf.compat.v1.assign(var, ph))
            feeds[ph], tf_vars[name] = value, var
        saver = tf.compat.v1.train.Saver(var_list=tf_vars)
        with tf.compat.v1.Session() as sess:
            sess.run(assigns, feed_dict=feeds)
            saver.save(sess, str(prefix), write_meta_graph=False)


# --------------------------------------------------------------------------- NumPy forward from the TF code

def _conv(x, kernel, stride):
    """conv2d_fixed_padding: fixed padding (k-1)//2 before, the rest after, then VALID when
    stride > 1; tf.layers SAME when stride == 1 (stride 1: the same split)."""
    k = kernel.shape[0]
    pad = ((0, 0), ((k - 1) // 2, k - 1 - (k - 1) // 2), ((k - 1) // 2, k - 1 - (k - 1) // 2), (0, 0))
    x = np.pad(x, pad)
    patches = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(1, 2))[:, ::stride, ::stride]  # B,H,W,C,k,k
    return np.einsum("bhwcij,ijco->bhwo", patches, kernel, optimize=True)


def _max_pool_same(x, k=3, s=2):
    """tf.layers.max_pooling2d(padding='SAME'): out = ceil(n / s), pad split floor/ceil with -inf."""
    pads = []
    for n in x.shape[1:3]:
        total = max((-(-n // s) - 1) * s + k - n, 0)
        pads.append((total // 2, total - total // 2))
    x = np.pad(x, ((0, 0), *pads, (0, 0)), constant_values=-np.inf)
    return np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(1, 2))[:, ::s, ::s].max(axis=(-1, -2))


def tf_forward(v: dict[str, np.ndarray], image_nhwc: np.ndarray, block_sizes=(2, 2, 2, 2)):
    """(final_dense L2-normalised, ENDING_POINTS) of ImagenetModel(18, v2) in inference, float64,
    each variable fetched in the order the TF code creates it."""
    v = {k: a.astype(np.float64) for k, a in v.items()}
    count = {"conv2d": 0, "batch_normalization": 0}

    def take(kind):
        i = count[kind]
        count[kind] += 1
        return f"resnet_model/{kind}{f'_{i}' if i else ''}"

    def conv(x, stride):
        return _conv(x, v[take("conv2d") + "/kernel"], stride)

    def bn(x):
        n = take("batch_normalization")
        return (x - v[n + "/moving_mean"]) / np.sqrt(v[n + "/moving_variance"] + EPS) * v[n + "/gamma"] + v[n + "/beta"]

    relu = lambda x: np.maximum(x, 0)  # noqa: E731
    ending = []
    x = _max_pool_same(conv(image_nhwc, 2))
    ending.append(x)
    for i, n in enumerate(block_sizes):
        for j in range(n):
            stride = (1 if i == 0 else 2) if j == 0 else 1
            shortcut = x
            a = relu(bn(x))
            ending.append(a)
            if j == 0:
                shortcut = conv(a, stride)
            x = conv(relu(bn(conv(a, stride))), 1) + shortcut
    x = relu(bn(x))
    ending.append(x)
    dense = x.mean(axis=(1, 2)) @ v["resnet_model/dense/kernel"] + v["resnet_model/dense/bias"]
    return dense / np.linalg.norm(dense, axis=1, keepdims=True), ending


# --------------------------------------------------------------------------- the checkpoint, imported

@pytest.fixture(scope="module")
def authors(tmp_path_factory):
    """(variables, checkpoint folder, the import's stderr, the export) of one written and imported checkpoint."""
    _tf()
    rng = np.random.default_rng(1901710)
    net = resnet_v2_variables(rng=rng)
    variables = {**net, **_leftovers(net, rng)}
    root = tmp_path_factory.mktemp("tf")
    write_tf1_checkpoint(root / "model.ckpt-1901710", variables)
    proc = localagg("import", str(root / "model.ckpt-1901710.index"), "--arch", "preact_resnet18",
                    "--out", str(root / "la_tf.pt"))
    assert proc.returncode == 0, proc.stderr
    export = torch.load(root / "la_tf.pt", map_location="cpu", weights_only=True)
    return net, variables, root, proc.stderr, export


def _imported(export):
    from localagg.models.backbone import EmbeddingNet

    meta = export["model_meta"]
    model = EmbeddingNet(meta["arch"], meta["stem"], meta["embedding_dim"])
    model.load_state_dict(export["model"])
    return model.double().eval()


def _scaled_max_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


@pytest.mark.parametrize("size", [64, 66], ids=["even-pool-input", "odd-pool-input"])
def test_the_imported_network_computes_what_the_tf_code_computes(authors, size):
    net, _, _, _, export = authors
    model = _imported(export)
    x = np.random.default_rng(size).standard_normal((2, size, size, 3))  # the normalised image, NHWC
    embedding, ending = tf_forward(net, x)
    with torch.no_grad():
        nchw = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
        got = model(nchw).numpy()
        maps = model.features(nchw, ("conv1", "conv2", "conv3", "conv4", "conv5"), conv1_after_maxpool=True)
    # float64 rounding: a sum of n <= 4608 products errs by at most ~n u |w||x| (u = 1.1e-16), typically
    # sqrt(n) u; over 18 layers that is ~1e-14 of the largest value (measured: 1e-15). float32 gives ~4e-7.
    tol = 1e-12
    assert _scaled_max_error(got, embedding) < tol
    for name, point in zip(("conv1", "conv2", "conv3", "conv4", "conv5"), (1, 3, 5, 7, 9)):  # ResNet-18's readouts
        want = ending[point].transpose(0, 3, 1, 2)
        assert maps[name].shape == want.shape, name
        assert _scaled_max_error(maps[name].numpy(), want) < tol, name


def test_the_export_keeps_the_bank_and_lists_what_was_dropped(authors):
    net, variables, _, stderr, export = authors
    assert export["objective"] == "imported" and export["model_meta"] == {
        "arch": "preact_resnet18", "stem": "imagenet", "embedding_dim": 128}
    assert torch.equal(export["bank"], torch.from_numpy(variables["instance/memory_bank"]))
    assert export["dataset"]["num_items"] == N_BANK and export["dataset"]["digest"] is None
    info = export["provenance"][0]
    assert info["format"] == "tf-la" and info["trunk_tensors"] == 91
    assert "authors' order" in info["bank"]["order"]
    assert info["dropped"] == ["global_step", "instance/all_labels", "instance/cluster_labels",
                               "resnet_model/*/Momentum (1)"]
    state = export["model"]  # float32 weights equal the checkpoint's bits
    assert torch.equal(state["trunk.conv1.weight"], torch.from_numpy(net["resnet_model/conv2d/kernel"]).permute(3, 2, 0, 1))
    assert torch.equal(state["head.weight"], torch.from_numpy(net["resnet_model/dense/kernel"]).T)
    assert "tf-la format; 91 trunk tensors mapped onto preact_resnet18" in stderr
    assert f"memory bank kept: {N_BANK} x 128" in stderr


def _tar(path: Path, root: Path, extra: dict[str, bytes] | None = None, link: str | None = None) -> Path:
    with tarfile.open(path, "w") as tar:
        for f in sorted(root.glob("model.ckpt-1901710*")) + [root / "checkpoint"]:
            tar.add(f, arcname=f"la_orig/{f.name}")
        for name, data in (extra or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if link:
            info = tarfile.TarInfo("la_orig/model.ckpt-1901710.meta")
            info.type, info.linkname = tarfile.SYMTYPE, link
            tar.addfile(info)
    return path


def test_the_authors_tar_imports_as_an_external_entry_and_its_checkpoint_files_only(authors, tmp_path):
    from stages.imports import import_checkpoint

    _, _, root, _, export = authors
    tar = _tar(tmp_path / "checkpoint-1901710.tar", root, extra={"la_orig/README": b"not a checkpoint"})
    info = import_checkpoint(tar, "preact_resnet18", out=tmp_path / "models" / "la_tf.pt")
    assert info["name"] == "checkpoint-1901710" and info["source_hashed"] == "checkpoint-1901710.tar"
    again = torch.load(tmp_path / "models" / "la_tf.pt", map_location="cpu", weights_only=True)
    assert all(torch.equal(again["model"][k], v) for k, v in export["model"].items())
    assert torch.equal(again["bank"], export["bank"])


@pytest.mark.parametrize("hostile, fragment", [
    (dict(extra={"../x": b"escape"}), "'../x' ('..' in its name)"),
    (dict(extra={"/etc/x": b"escape"}), "'/etc/x' (an absolute name)"),
    (dict(link="/etc/passwd"), "(a link (to /etc/passwd))"),
], ids=["dot-dot", "absolute", "symlink"])
def test_a_hostile_tar_is_refused_before_anything_is_extracted(authors, tmp_path, hostile, fragment):
    from stages.imports import import_checkpoint

    tar = _tar(tmp_path / "evil.tar", authors[2], **hostile)
    with pytest.raises(UserError, match="could write outside") as err:
        import_checkpoint(tar, "preact_resnet18", out=tmp_path / "x.pt")
    assert fragment in str(err.value) and "nothing was extracted" in str(err.value)
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.pt").exists()


def test_a_missing_variable_and_another_network_are_named(authors, tmp_path):
    from localagg.models.tf_checkpoint import TFFound, convert
    from stages.imports import import_checkpoint

    net = dict(authors[0])
    del net["resnet_model/batch_normalization_16/gamma"]
    write_tf1_checkpoint(tmp_path / "cut", net)
    with pytest.raises(UserError) as err:
        import_checkpoint(tmp_path / "cut", "preact_resnet18", out=tmp_path / "cut.pt")
    assert "missing 1: resnet_model/batch_normalization_16/gamma" in str(err.value)
    proc = localagg("import", str(authors[2] / "model.ckpt-1901710"), "--arch", "resnet18", "--out", str(tmp_path / "r.pt"))
    _assert_user_error(proc, "is the authors' TF ResNet (preact_resnet18)", "set model.arch (or --arch) to preact_resnet18")
    # ResNet-50's 251 variables (shapes only: nothing is written) into preact_resnet18
    r50 = {k[len("resnet_model/"):]: np.broadcast_to(np.float32(0), a.shape)
           for k, a in resnet_v2_variables((3, 4, 6, 3), bottleneck=True).items()}
    with pytest.raises(UserError, match=r"251 variables under resnet_model/\) holds preact_resnet50, not preact_resnet18 "
                                        r"\(91 variables\): set model.arch \(or --arch\) to preact_resnet50"):
        convert(TFFound(r50, None), "preact_resnet18")


def test_without_tensorflow_the_message_names_the_install_command(tmp_path, monkeypatch):
    from localagg.models.tf_checkpoint import read_variables

    monkeypatch.setitem(sys.modules, "tensorflow", None)  # `import tensorflow` raises ImportError
    with pytest.raises(UserError, match=r"needs TensorFlow, the optional extra `tf`.*make setup-tf"):
        read_variables(tmp_path / "model.ckpt-1", "x")


def test_an_external_entry_may_name_the_format():
    from stages.params import ExternalModel

    assert ExternalModel(path="la_orig/checkpoint-1901710.tar", format="tf-la").format == "tf-la"


def test_check_names_the_missing_extra_for_a_tf_entry(tmp_path, monkeypatch):
    import importlib.util

    from localagg.models.config import ModelConfig
    from stages.imports import entry_problems
    from stages.params import ExternalModel

    with tarfile.open(tmp_path / "la.tar", "w") as tar:
        info = tarfile.TarInfo("la_orig/model.ckpt-1.index")
        tar.addfile(info, io.BytesIO(b""))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    entry = ExternalModel(path=str(tmp_path / "la.tar"))
    problems = entry_problems("la_tf", entry, ModelConfig(arch="preact_resnet18", stem="imagenet"))
    assert problems == [f"external.la_tf.path {tmp_path / 'la.tar'} is a TensorFlow checkpoint, and reading it needs "
                        "the optional extra `tf`: make setup-tf (or: .venv/bin/pip install -r requirements-tf.lock "
                        "-c requirements.lock)"]
