"""Backbones with the Local Aggregation embedding head."""

from .backbone import ARCHS, READOUT_LAYERS, STEMS, EmbeddingNet, build_model

__all__ = ["ARCHS", "READOUT_LAYERS", "STEMS", "EmbeddingNet", "build_model"]
