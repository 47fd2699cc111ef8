"""The TensorFlow layers the authors' networks are built from, as PyTorch modules.

    conv        tf.layers.conv2d / slim.conv2d: odd kernel k, stride s. The TF code pads by
                (k-1)//2 before and k-1-(k-1)//2 after when s > 1 ("fixed padding", then
                VALID) and uses SAME when s = 1; for odd k both are a symmetric k//2, which
                is nn.Conv2d(padding=k//2). Bias only where the TF layer has one.
    SamePool2d  tf.layers.max_pooling2d(padding="SAME"): out = ceil(in / s); the total pad
                max((out-1) s + k - in, 0) is split floor/ceil (before/after) and padded
                with -inf, so that it never wins the max. For the 3x3/2 pool of even inputs
                this is MaxPool2d(ceil_mode=True); for odd ones it is not (the pad goes first).
    variance_scaling_  tf.variance_scaling_initializer() (scale 1, fan_in, truncated normal):
                std = sqrt(1 / fan_in) / 0.87962566 (the std of a unit normal cut at +-2),
                cut at +-2 std
    xavier_     slim's default weights (glorot uniform), zero biases
    batch_norm  tf.layers.batch_normalization(momentum=0.997, epsilon=1e-5): TF's momentum
                is the decay of the running statistics, torch's is 1 - decay.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

TF_BN_DECAY = 0.997
TF_BN_EPS = 1e-5


def conv(c_in: int, c_out: int, kernel: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    """A TF conv2d of odd `kernel` (fixed or SAME padding: symmetric kernel // 2)."""
    assert kernel % 2 == 1, "the TF padding rule is symmetric only for odd kernels"
    return nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=bias)


def variance_scaling_(weight: torch.Tensor) -> torch.Tensor:
    """In place: TF's variance-scaling init (module docstring); weight (C_out, C_in, k, k)."""
    std = math.sqrt(1.0 / (weight[0].numel())) / 0.87962566103423978
    return nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)


def xavier_(layer: nn.Conv2d | nn.Linear) -> None:
    """In place: slim's default init, glorot-uniform weights and zero biases."""
    nn.init.xavier_uniform_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


def batch_norm(channels: int, momentum: float | None = None) -> nn.BatchNorm2d:
    """TF batch norm (decay 0.997, eps 1e-5); `momentum` (torch's sense) overrides 1 - decay."""
    return nn.BatchNorm2d(channels, eps=TF_BN_EPS, momentum=1 - TF_BN_DECAY if momentum is None else momentum)


def same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(before, after) padding of TF's SAME rule along one axis of `size`."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SamePool2d(nn.Module):
    """tf.layers.max_pooling2d(pool_size=kernel, strides=stride, padding="SAME")."""

    def __init__(self, kernel: int, stride: int):
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (top, bottom), (left, right) = (same_pads(n, self.kernel, self.stride) for n in x.shape[-2:])
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom), value=float("-inf"))
        return F.max_pool2d(x, self.kernel, self.stride)

    def extra_repr(self) -> str:
        return f"kernel={self.kernel}, stride={self.stride}, padding=SAME"
