"""What a readout will hold, computed from shapes alone (a forward on PyTorch's meta device, no
compute, no memory): the pooled feature size of every readout layer, and the bytes of the
feature cache (`cache_features`), so that a cache that cannot fit is refused before any work."""

from __future__ import annotations

import torch

from ..models.backbone import PIXELS, RawPixels, build_model
from ..models.config import ModelConfig
from .heads import LayerReadout
from .readout_config import LinearReadoutConfig


def readout_dims(model_cfg: ModelConfig | None, cfg: LinearReadoutConfig) -> dict[str, int]:
    """{layer: D} of the pooled features the readout trains on (model_cfg None: the raw pixels)."""
    with torch.device("meta"):
        model = RawPixels() if model_cfg is None else build_model(model_cfg.arch, model_cfg.stem,
                                                                   model_cfg.embedding_dim)
        model.eval()  # a 1-image probe through batch norm
        layers = [PIXELS] if model_cfg is None else [layer for layer in cfg.layers if layer != PIXELS]
        maps = model.features(torch.empty(1, 3, cfg.crop_size, cfg.crop_size), layers,
                              conv1_after_maxpool=cfg.conv1_point == "after_maxpool")
        return {name: LayerReadout(*fmap.shape[1:], 2, cfg.pool_target_dims, cfg.pool_rule).dim
                for name, fmap in maps.items()}


def cache_bytes(dims: dict[str, int], train_images: int, val_images: int, cfg: LinearReadoutConfig) -> int:
    """Host bytes of the readout's feature cache over all ranks: the training set's pooled
    features, and the validation set's when there are no 10 crops (0 without cache_features)."""
    if not cfg.cache_features:
        return 0
    images = train_images + (0 if cfg.ten_crop else val_images)
    return images * sum(dims.values()) * (8 if cfg.float64 else 4)


def available_host_bytes() -> int | None:
    """MemAvailable of /proc/meminfo (None where there is none)."""
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
