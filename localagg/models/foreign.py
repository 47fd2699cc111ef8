"""Published ResNet checkpoints in their own layouts, converted to the pipeline's EmbeddingNet.

    format       where the trunk is in the file                       head kept when it fits
    localagg     the pipeline's export ("model", "model_meta")        trunk.* / head.*
    torchvision  a flat state dict: conv1., bn1., layer1-4., fc.      fc (1000 classes: dropped)
    moco         state_dict: module.encoder_q.*  (v1: fc 128-d;       v1's fc; v2's MLP dropped
                 v2: fc.0 / fc.2 MLP; encoder_k, queue dropped)
    npid         state_dict: module.* with a 128-d fc (lemniscate;    fc
                 the file also pickles a `lemniscate` memory object)
    vissl        classy_state_dict.base_model.model.trunk:            a single linear head in
                 _feature_blocks.*; heads beside it                   ...model.heads
    mmselfsup    state_dict: backbone.*; neck.*, head.* beside it     a single linear neck
    hub          a flat dict with module.* (SwAV, DeepCluster-v2):    (projection MLPs and
                 projection_head.*, prototypes.* beside the trunk     prototypes dropped)

`detect(state)` names the format from the file's keys; `extract(state, fmt)` returns the trunk
under torchvision's names and the head candidates; `convert(found, arch, stem, embedding_dim)`
loads them strictly into an EmbeddingNet. A linear head is kept as the embedding when its
shape is (embedding_dim, trunk width); otherwise the embedding is the pooled conv5 feature
itself (an identity head: embedding_dim = trunk width), and the result says which. Missing,
unexpected or misshapen trunk keys are one UserError listing them with the likely cause (the
architecture the keys belong to, or another format). The file is read with
runtime.untrusted.read_untrusted: nothing in it runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from ..errors import UserError
from .backbone import EmbeddingNet

FORMATS = ("localagg", "torchvision", "moco", "npid", "vissl", "mmselfsup", "hub")
TRUNK = re.compile(r"^(conv1|bn1|layer[1-4])\.")


@dataclass
class Found:
    format: str
    trunk: dict[str, torch.Tensor]          # torchvision ResNet names, no fc
    heads: dict[str, torch.Tensor]          # the head tensors beside the trunk (names as in the file)
    dropped: list[str] = field(default_factory=list)  # groups of keys left out (encoder_k, queue, ...)


def _tensors(d) -> dict[str, torch.Tensor]:
    return {k: v for k, v in d.items() if isinstance(v, torch.Tensor)} if isinstance(d, dict) else {}


def detect(state) -> str:
    """The format of a loaded checkpoint (module table); a UserError when none fits."""
    if not isinstance(state, dict):
        raise UserError(f"the file holds a {type(state).__name__}, not a state dict or a checkpoint dict.")
    if {"model", "model_meta", "objective"} <= set(state):
        return "localagg"
    if "classy_state_dict" in state:
        return "vissl"
    inner = _tensors(state.get("state_dict"))
    if inner:
        keys = list(inner)
        if any(k.startswith(("module.encoder_q.", "encoder_q.")) for k in keys):
            return "moco"
        if any(k.startswith("backbone.") for k in keys):
            return "mmselfsup"
        if any(k.startswith("module.conv1.") for k in keys) or "lemniscate" in state:
            return "npid"
        if "conv1.weight" in inner:
            return "torchvision"
    flat = _tensors(state)
    if "module.conv1.weight" in flat:
        return "hub"
    if "conv1.weight" in flat:
        return "torchvision"
    raise UserError("no known checkpoint layout fits the file's keys (" + ", ".join(list(state)[:6])
                    + f"{' ...' if len(state) > 6 else ''}); formats: {', '.join(FORMATS)}. Give --format if it is one "
                    "of them with other names.")


def _split(tensors: dict[str, torch.Tensor], prefix: str) -> tuple[dict, dict]:
    """(trunk under torchvision names, the rest under their own) of the keys that start with prefix."""
    trunk, rest = {}, {}
    for k, v in tensors.items():
        if not k.startswith(prefix):
            continue
        name = k[len(prefix):]
        (trunk if TRUNK.match(name) else rest)[name] = v
    return trunk, rest


def extract(state, fmt: str) -> Found:
    """The trunk and the head candidates of a checkpoint in format `fmt`."""
    if fmt not in FORMATS:
        raise UserError(f"unknown checkpoint format {fmt!r}; expected one of: {', '.join(FORMATS)}.")
    if fmt == "localagg":
        trunk, rest = _split(_tensors(state["model"]), "trunk.")
        heads = {k[len("head."):]: v for k, v in _tensors(state["model"]).items() if k.startswith("head.")}
        return Found(fmt, trunk, heads)
    if fmt == "vissl":
        try:
            model = state["classy_state_dict"]["base_model"]["model"]
        except (KeyError, TypeError):
            raise UserError("a VISSL checkpoint keeps its weights under classy_state_dict.base_model.model; "
                            "this file has no such entry.") from None
        trunk, rest = _split(_tensors(model.get("trunk")), "_feature_blocks.")
        return Found(fmt, trunk, _tensors(model.get("heads")), [f"trunk.{k}" for k in rest])
    if fmt == "torchvision":
        tensors = _tensors(state.get("state_dict")) or _tensors(state)
        trunk, rest = _split(tensors, "")
        return Found(fmt, trunk, {k[3:]: v for k, v in rest.items() if k.startswith("fc.")},
                     [k for k in rest if not k.startswith("fc.")])
    if fmt == "hub":
        trunk, rest = _split(_tensors(state), "module.")
        return Found(fmt, trunk, {}, sorted({k.split(".")[0] for k in rest}))
    inner = _tensors(state.get("state_dict"))
    if not inner:
        raise UserError(f"a {fmt} checkpoint keeps its weights under 'state_dict'; this file has none.")
    prefix = {"moco": "module.encoder_q." if any(k.startswith("module.") for k in inner) else "encoder_q.",
              "npid": "module." if any(k.startswith("module.") for k in inner) else "",
              "mmselfsup": "backbone."}[fmt]
    trunk, rest = _split(inner, prefix)
    heads = {k[3:]: v for k, v in rest.items() if k.startswith("fc.")}
    if fmt == "mmselfsup":
        heads = {k[len("neck."):]: v for k, v in inner.items() if k.startswith("neck.")}
    others = sorted({k[: len(k) - len(k.split(".", 2)[-1]) - 1] if k.count(".") > 1 else k.split(".")[0]
                     for k in inner if not k.startswith(prefix)})
    dropped = others + [k for k in rest if not k.startswith("fc.")]
    dropped += [k for k in state if k not in ("state_dict",) and not isinstance(state[k], (int, float, str))]
    return Found(fmt, trunk, heads, dropped)


def guess_arch(trunk: dict[str, torch.Tensor]) -> str:
    """The torchvision ResNet the trunk's keys belong to ("resnet50", "resnet18", ...; "?" if unclear)."""
    blocks = [len({k.split(".")[1] for k in trunk if k.startswith(f"layer{i}.")}) for i in range(1, 5)]
    bottleneck = any(k.endswith("conv3.weight") for k in trunk)
    known = {(2, 2, 2, 2, False): "resnet18", (3, 4, 6, 3, False): "resnet34", (3, 4, 6, 3, True): "resnet50",
             (3, 4, 23, 3, True): "resnet101", (3, 8, 36, 3, True): "resnet152"}
    return known.get((*blocks, bottleneck), "?")


def _linear_head(heads: dict[str, torch.Tensor], width: int, dim: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The (weight, bias) of a head that is one linear layer of shape (dim, width), else None."""
    weights = {k: v for k, v in heads.items() if k.endswith("weight") and v.dim() == 2}
    if len(weights) != 1:
        return None
    name, w = next(iter(weights.items()))
    if tuple(w.shape) != (dim, width):
        return None
    bias = heads.get(name[: -len("weight")] + "bias")
    return w, bias if bias is not None else torch.zeros(dim, dtype=w.dtype)


@dataclass
class Converted:
    model: EmbeddingNet
    head: str                               # what the embedding is, in words
    mapped: int                             # trunk tensors loaded


def convert(found: Found, arch: str, stem: str = "imagenet", embedding_dim: int = 128, source: str = "the file") -> Converted:
    """Load the trunk strictly into EmbeddingNet(arch, stem, D) and keep the head when it fits
    (module docstring); D becomes the trunk width when no head does."""
    floats = [v.dtype for v in found.trunk.values() if v.is_floating_point()]
    dtype = torch.float64 if floats and floats[0] == torch.float64 else torch.float32  # fp16 files read as fp32
    probe = EmbeddingNet(arch, stem, embedding_dim).to(dtype)
    want = {k: v for k, v in probe.trunk.state_dict().items()}
    trunk = dict(found.trunk)
    for k in want:  # checkpoints from before torch 0.4.1 have no batch-norm step counters
        if k.endswith("num_batches_tracked") and k not in trunk and k.replace("num_batches_tracked", "weight") in trunk:
            trunk[k] = torch.zeros((), dtype=torch.long)
    missing = sorted(set(want) - set(trunk))
    extra = sorted(set(trunk) - set(want))
    shapes = sorted(f"{k} {tuple(trunk[k].shape)} vs {tuple(want[k].shape)}" for k in set(want) & set(trunk)
                    if trunk[k].shape != want[k].shape)
    if missing or extra or shapes:
        guessed = guess_arch(found.trunk)
        cause = (f"the file's trunk is a {guessed}, not a {arch}: set model.arch (or --arch) to {guessed}"
                 if guessed not in ("?", arch) else
                 "the keys are not a torchvision ResNet's under this format's prefix: another format (--format) or "
                 "another stem (model.stem)" if not trunk or extra or missing else "another stem (model.stem)")
        parts = [f"{label} {len(keys)}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
                 for label, keys in (("missing", missing), ("unexpected", extra), ("misshapen", shapes)) if keys]
        raise UserError(f"{source} ({found.format} format) does not fit {arch} ({stem} stem): {'; '.join(parts)}. "
                        f"Likely cause: {cause}.")
    width = probe.feature_dim
    head = _linear_head(found.heads, width, embedding_dim)
    if head is None:
        dim = width
        what = (f"no linear {embedding_dim} x {width} head in the file" + (f" (its head: {', '.join(sorted(found.heads)[:4])})"
                if found.heads else "") + f": the embedding is the pooled conv5 feature ({width}-d, identity head)")
    else:
        dim, what = embedding_dim, f"the file's linear head ({embedding_dim} x {width}) is the embedding"
    model = EmbeddingNet(arch, stem, dim).to(dtype)
    model.trunk.load_state_dict({k: trunk[k].to(want[k].dtype) for k in want}, strict=True)
    with torch.no_grad():
        if head is None:
            model.head.weight.copy_(torch.eye(width, dtype=dtype))
            model.head.bias.zero_()
        else:
            model.head.weight.copy_(head[0])
            model.head.bias.copy_(head[1])
    return Converted(model, what, len(found.trunk))
