"""The authors' TensorFlow checkpoints (format "tf-la") converted to the pipeline's EmbeddingNet.

The LA code (neuroailab/LocalAggregation, model/instance_model.py) builds the TF-official
ResNet v2 under the variable scope `resnet_model/` with tf.layers, so its variables are named
by layer kind and creation order, and the memory bank beside it:

    resnet_model/conv2d{,_1,_2,...}/kernel                 (k, k, C_in, C_out)  HWIO
    resnet_model/batch_normalization{,_1,...}/{gamma, beta, moving_mean, moving_variance}  (C,)
    resnet_model/dense/kernel (width, D), dense/bias (D,)  the embedding, then L2-normalised
    instance/memory_bank (N, D)                            one row per training image, in the
                                                           authors' tfrecord order
    instance/cluster_labels, instance/all_labels, global_step, .../Momentum   dropped, listed

preact_resnet registers its modules in the TF creation order, so the i-th nn.Conv2d of the
trunk is conv2d_i and the i-th BatchNorm2d batch_normalization_i (ResNet-18: 21 convs, 17
batch norms, 91 variables with the dense layer; ResNet-50: 53, 49, 251). The mapping:

    conv weight (O, I, kh, kw)     = kernel.transpose(3, 2, 0, 1)
    bn weight, bias                = gamma, beta
    bn running_mean, running_var   = moving_mean, moving_variance  (eps 1e-5 on both sides)
    head weight (D, width), bias   = dense/kernel.T, dense/bias

The TF graph takes uint8 NHWC images, divides by 255 and subtracts the ImageNet mean / divides
by its std (ColorNormalize) itself; the pipeline feeds that normalised image as an NCHW tensor,
so the imported network computes what the TF one does on the same normalised input.

Accepted files: the authors' tar (`checkpoint-1901710.tar`; only its checkpoint members are
extracted, into a temporary folder removed afterwards, and a member with an absolute name,
`..`, or that is a link refuses the whole tar), a checkpoint's `.index` or `.data-*` file, or
its prefix. Reading needs TensorFlow (the optional extra `tf`), imported only here; nothing in
the checkpoint is executed (tf.train.load_checkpoint reads tensors, builds no graph).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterator

import numpy as np
import torch
import torch.nn as nn

from ..errors import UserError
from .backbone import EmbeddingNet

TF_FORMAT = "tf-la"
INSTALL = "make setup-tf (or: .venv/bin/pip install -r requirements-tf.lock -c requirements.lock)"
SCOPE = "resnet_model/"
BANK = "instance/memory_bank"
BN_FIELDS = (("gamma", "weight"), ("beta", "bias"), ("moving_mean", "running_mean"), ("moving_variance", "running_var"))
# (convs, batch norms) of the TF-official ResNets -> the arch it is ("v1": another network than the LA code's)
KNOWN = {(21, 17): "preact_resnet18", (37, 33): "a v2 ResNet-34 (no such arch here)", (53, 49): "preact_resnet50",
         (21, 21): "a v1 ResNet-18 (TF's, not the LA code's v2)", (53, 53): "a v1 ResNet-50 (TF's, not the LA code's v2)"}
DATA = re.compile(r"\.data-\d{5}-of-\d{5}$")


def _member_kind(name: str) -> str | None:
    """What a file of a TF checkpoint is, by its name: index, data, state (the `checkpoint`
    file) or None (anything else: .meta graphs, events, READMEs are not read)."""
    base = PurePosixPath(name).name
    if base.endswith(".index"):
        return "index"
    if DATA.search(base):
        return "data"
    if base == "checkpoint":
        return "state"
    return None


def is_tf_checkpoint(path: Path) -> bool:
    """Whether `path` is one of the accepted TF files (module docstring), without TensorFlow."""
    path = Path(path)
    if _member_kind(path.name) in ("index", "data") or Path(str(path) + ".index").is_file():
        return True
    if path.is_file() and tarfile.is_tarfile(path):
        with contextlib.suppress(tarfile.TarError, OSError), tarfile.open(path) as tar:
            return any(_member_kind(m.name) == "index" for m in tar)
    return False


def _unsafe(member: tarfile.TarInfo) -> str | None:
    parts = PurePosixPath(member.name).parts
    if member.name.startswith(("/", "\\")) or (parts and re.match(r"^[A-Za-z]:", parts[0])):
        return "an absolute name"
    if ".." in parts:
        return "'..' in its name"
    if member.issym() or member.islnk():
        return f"a link (to {member.linkname})"
    if not (member.isfile() or member.isdir()):
        return "not a plain file"
    return None


def _extract(tar_path: Path, into: Path) -> Path:
    """The checkpoint prefix of the tar's one checkpoint, its index and data files written
    flat into `into` (module docstring: what is refused)."""
    try:
        tar = tarfile.open(tar_path)
    except (tarfile.TarError, OSError) as exc:
        raise UserError(f"{tar_path} cannot be read as a tar ({exc}); is it truncated? Download it again.") from None
    with tar:
        members = tar.getmembers()
        bad = [f"{m.name!r} ({why})" for m in members if (why := _unsafe(m))]
        if bad:
            raise UserError(f"{tar_path} has member(s) that could write outside the folder they are extracted to: "
                            f"{', '.join(bad[:4])}; nothing was extracted. Use the authors' tar as downloaded, or "
                            "extract the checkpoint yourself and give its .index file.")
        wanted = [m for m in members if m.isfile() and _member_kind(m.name)]
        indexes = [m.name for m in wanted if _member_kind(m.name) == "index"]
        if len(indexes) != 1:
            found = ", ".join(indexes) if indexes else "none"
            raise UserError(f"{tar_path} should hold one TF checkpoint (one .index file); it holds {found}. "
                            "Extract the one to import and give its .index file.")
        for m in wanted:
            src = tar.extractfile(m)
            with src, open(into / PurePosixPath(m.name).name, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 22)
        return into / PurePosixPath(indexes[0]).name[: -len(".index")]


@contextlib.contextmanager
def checkpoint_prefix(path: Path) -> Iterator[Path]:
    """The prefix TensorFlow reads for `path` (a tar, an .index or .data file, or a prefix);
    a tar is extracted into a temporary folder that is removed on exit."""
    path = Path(path)
    if path.is_file() and tarfile.is_tarfile(path):
        with tempfile.TemporaryDirectory(prefix="localagg-tf-") as tmp:
            yield _extract(path, Path(tmp))
        return
    kind = _member_kind(path.name)
    prefix = Path(str(path)[: -len(".index")]) if kind == "index" else (
        Path(DATA.sub("", str(path))) if kind == "data" else path)
    if not Path(str(prefix) + ".index").is_file():
        raise UserError(f"{path} is no TF checkpoint: {prefix}.index does not exist. Give the authors' tar, or a "
                        "checkpoint's .index file (its .data-* files beside it).")
    yield prefix


def _tensorflow():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    try:
        import tensorflow as tf
    except ImportError as exc:
        raise UserError(f"reading a TensorFlow checkpoint needs TensorFlow, the optional extra `tf` ({exc}). "
                        f"Install it: {INSTALL}.") from None
    return tf


def read_variables(prefix: Path, source: str) -> dict[str, np.ndarray]:
    """{name: array} of every variable of the checkpoint at `prefix` (TensorFlow's reader)."""
    tf = _tensorflow()
    try:
        reader = tf.train.load_checkpoint(str(prefix))
        return {name: np.asarray(reader.get_tensor(name)) for name in sorted(reader.get_variable_to_shape_map())}
    except (tf.errors.OpError, ValueError) as exc:
        raise UserError(f"{source} cannot be read as a TF checkpoint ({type(exc).__name__}: "
                        f"{str(exc).strip().splitlines()[0][:200]}); is a .data file missing or truncated?") from None


def tf_layout(trunk: nn.Module) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{TF name under resnet_model/: (trunk state-dict key, TF shape)} in TF creation order."""
    out: dict[str, tuple[str, tuple[int, ...]]] = {}
    convs = bns = 0
    for name, m in trunk.named_modules():
        if isinstance(m, nn.Conv2d):
            o, i, kh, kw = m.weight.shape
            out[f"conv2d{f'_{convs}' if convs else ''}/kernel"] = (f"{name}.weight", (kh, kw, i, o))
            convs += 1
        elif isinstance(m, nn.BatchNorm2d):
            for tf_field, torch_field in BN_FIELDS:
                out[f"batch_normalization{f'_{bns}' if bns else ''}/{tf_field}"] = (f"{name}.{torch_field}",
                                                                                   (m.num_features,))
            bns += 1
    return out


def guess_arch(names) -> str:
    """The network the resnet_model/ variables belong to, from its numbers of convs and batch
    norms ("?" when it is none of the TF-official ResNets)."""
    convs = sum(bool(re.fullmatch(r"conv2d(_\d+)?/kernel", n)) for n in names)
    bns = sum(bool(re.fullmatch(r"batch_normalization(_\d+)?/gamma", n)) for n in names)
    return KNOWN.get((convs, bns), "?")


@dataclass
class TFFound:
    model: dict[str, np.ndarray]            # names under resnet_model/, without the scope
    bank: np.ndarray | None                 # instance/memory_bank, (N, D)
    dropped: list[str] = field(default_factory=list)


def split(variables: dict[str, np.ndarray], source: str) -> TFFound:
    """The network's variables (under the one `<...>resnet_model/` scope), the bank, and the
    names of everything else (dropped)."""
    roots = sorted({k[: k.index(SCOPE)] for k in variables if k.endswith(SCOPE + "conv2d/kernel")})
    if len(roots) != 1:
        shown = ", ".join(sorted(variables)[:6]) + (" ..." if len(variables) > 6 else "")
        raise UserError(f"{source} is a TF checkpoint but not of the LA code's ResNet: "
                        + ("no" if not roots else f"{len(roots)} ({', '.join(roots)})")
                        + f" `resnet_model/conv2d/kernel` (its variables: {shown}). The LA ResNets keep their layers "
                        "under resnet_model/ (AlexNet and VGG checkpoints are not imported).")
    scope = roots[0] + SCOPE
    model = {k[len(scope):]: v for k, v in variables.items() if k.startswith(scope) and k.count("/") == scope.count("/") + 1}
    bank_key = roots[0] + BANK if roots[0] + BANK in variables else (BANK if BANK in variables else None)
    slots: dict[str, int] = {}  # optimiser slots and averages of the network's variables: resnet_model/<layer>/<var>/<slot>
    dropped = []
    for k in sorted(variables):
        if k == bank_key or (k.startswith(scope) and k[len(scope):] in model):
            continue
        if k.startswith(scope):
            slot = f"{scope}*/{k.split('/', scope.count('/') + 2)[-1]}"
            slots[slot] = slots.get(slot, 0) + 1
        else:
            dropped.append(k)
    dropped += [f"{slot} ({n})" for slot, n in slots.items()]
    return TFFound(model, variables[bank_key] if bank_key else None, dropped)


@dataclass
class TFConverted:
    model: EmbeddingNet
    head: str                               # what the embedding is, in words
    mapped: int                             # TF variables loaded into the network
    bank: torch.Tensor | None


def convert(found: TFFound, arch: str, stem: str = "imagenet", source: str = "the file") -> TFConverted:
    """Load the variables into EmbeddingNet(arch, stem, D) by the mapping of the module
    docstring, D the dense layer's width; every missing, unexpected or misshapen variable is
    named in one UserError with the arch the file looks like."""
    guessed = guess_arch(found.model)
    if not arch.startswith("preact_resnet"):
        cause = f"set model.arch (or --arch) to {guessed}" if guessed.startswith("preact") else \
            "the LA code's ResNets are preact_resnet18 and preact_resnet50"
        raise UserError(f"{source} ({TF_FORMAT} format) is the authors' TF ResNet ({guessed}), which is not {arch} "
                        f"(torchvision's v1 ResNet): {cause}.")
    dense = found.model.get("dense/kernel")
    dim = dense.shape[1] if dense is not None and dense.ndim == 2 else 128
    probe = EmbeddingNet(arch, stem, dim)
    layout = {k: (f"trunk.{key}", shape) for k, (key, shape) in tf_layout(probe.trunk).items()}
    layout["dense/kernel"] = ("head.weight", (probe.feature_dim, dim))
    layout["dense/bias"] = ("head.bias", (dim,))
    missing = [k for k in layout if k not in found.model]
    extra = sorted(k for k in found.model if k not in layout)
    shapes = [f"{k} {tuple(found.model[k].shape)} vs {layout[k][1]}" for k in layout
              if k in found.model and tuple(found.model[k].shape) != layout[k][1]]
    if missing or extra or shapes:
        counted = f"{len(found.model)} variables under {SCOPE}"
        if guessed != "?" and guessed != arch:
            fix = (f"set model.arch (or --arch) to {guessed}" if guessed.startswith("preact")
                   else "the pipeline imports the LA code's v2 ResNets only (preact_resnet18, preact_resnet50)")
            raise UserError(f"{source} ({TF_FORMAT} format, {counted}) holds {guessed}, not {arch} "
                            f"({len(layout)} variables): {fix}.")
        cause = ("another stem (model.stem)" if shapes and not missing and not extra
                 else "not the TF-official ResNet v2 as the LA code builds it, or a cut checkpoint")
        parts = [f"{label} {len(keys)}: {', '.join(SCOPE + k for k in keys[:6])}{' ...' if len(keys) > 6 else ''}"
                 for label, keys in (("missing", missing), ("unexpected", extra), ("misshapen", shapes)) if keys]
        raise UserError(f"{source} ({TF_FORMAT} format, {counted}) does not fit {arch} ({stem} stem, "
                        f"{len(layout)} variables): {'; '.join(parts)}. Likely cause: {cause}.")
    state = probe.state_dict()
    for tf_name, (key, _) in layout.items():
        value = torch.from_numpy(np.ascontiguousarray(found.model[tf_name], dtype=np.float32))
        state[key] = value.permute(3, 2, 0, 1) if value.dim() == 4 else (value.T if key == "head.weight" else value)
    for key in state:
        if key.endswith("num_batches_tracked"):
            state[key] = torch.zeros((), dtype=torch.long)
    probe.load_state_dict({k: v.contiguous() for k, v in state.items()}, strict=True)
    bank = None
    if found.bank is not None:
        if found.bank.ndim != 2 or found.bank.shape[1] != dim:
            raise UserError(f"{source}: {BANK} has shape {tuple(found.bank.shape)}, not (N, {dim}) as the dense layer; "
                            "the file is not one LA run's checkpoint.")
        bank = torch.from_numpy(np.ascontiguousarray(found.bank, dtype=np.float32))
    what = f"the file's dense layer ({dim} x {probe.feature_dim}) then L2-normalise is the embedding (the LA code's)"
    return TFConverted(probe, what, len(layout), bank)
