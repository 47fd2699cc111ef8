"""Batched augmentation on uint8 image tensors, on the training device.

One random draw per image of the *global* batch (all ranks), from a generator seeded by
(seed, epoch, step): a rank takes its slice, so 2 processes see exactly the augmentations
1 process would, and a resumed run sees what an uninterrupted one would.

The paper's ImageNet recipe (la-method.md): RandomResizedCrop(224, scale 0.2-1, ratio 3/4-4/3),
RandomGrayscale(0.2), ColorJitter(0.4, 0.4, 0.4, 0.4), horizontal flip, mean/std.
Differences from torchvision's per-image transforms, stated in the report:
- the colour-jitter operations run in the fixed order brightness, contrast, saturation,
  hue (torchvision permutes them per image);
- the crop is resampled bilinearly with `grid_sample` (torchvision resizes with antialias).
For file datasets (ImageNet) the crop is done at decode time by the data loader (full image,
torchvision's RandomResizedCrop) and this module does the rest; `crop=False` then.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator


class AugmentSpec(BaseModel):
    """The augmentation recipe (params section `augment`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    crop_size: int = Field(224, ge=8, description="output side in pixels")
    crop_scale: tuple[float, float] = Field((0.2, 1.0), description="RandomResizedCrop area range")
    crop_ratio: tuple[float, float] = Field((3 / 4, 4 / 3), description="RandomResizedCrop aspect range")
    hflip: bool = True
    color_jitter: tuple[float, float, float, float] = Field((0.4, 0.4, 0.4, 0.4), description="brightness, contrast, saturation, hue")
    grayscale_p: float = Field(0.2, ge=0, le=1)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    @field_validator("crop_scale")
    @classmethod
    def _scale(cls, value):
        return check_range(value, upper=1.0)

    @field_validator("crop_ratio")
    @classmethod
    def _ratio(cls, value):
        return check_range(value)

    @field_validator("std")
    @classmethod
    def _std(cls, value):
        if min(value) <= 0:
            raise ValueError("must be > 0 for every channel (inputs are divided by it)")
        return value

    @field_validator("color_jitter")
    @classmethod
    def _jitter(cls, value):
        if min(value) < 0 or value[3] > 0.5:
            raise ValueError("is [brightness, contrast, saturation, hue] with each >= 0 and hue <= 0.5")
        return value


def check_range(value: tuple[float, float], upper: float | None = None) -> tuple[float, float]:
    """`value` when it is a [min, max] pair with 0 < min <= max (<= upper when given); else ValueError."""
    lo, hi = value
    if not (0 < lo <= hi) or (upper is not None and hi > upper):
        limit = f" <= {upper:g}" if upper is not None else ""
        raise ValueError(f"must be [min, max] with 0 < min <= max{limit}")
    return value


def step_generator(seed: int, *keys: int) -> torch.Generator:
    """A CPU generator seeded from `seed` and integer keys (e.g. epoch, step)."""
    value = seed
    for k in keys:
        value = (value * 1_000_003 + int(k) + 1) % (2**62)
    return torch.Generator().manual_seed(value)


def sample_crops(n: int, height: int, width: int, scale, ratio, g: torch.Generator, attempts: int = 10) -> torch.Tensor:
    """torchvision's RandomResizedCrop boxes, vectorised: (n, 4) as (x0, y0, w, h) in pixels.

    Up to `attempts` draws per image of area fraction in `scale` and log-uniform aspect
    ratio in `ratio`; the first that fits wins; else a centre crop clamped to `ratio`.
    """
    area = height * width
    s = torch.empty(n, attempts).uniform_(scale[0], scale[1], generator=g) * area
    logr = torch.empty(n, attempts).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=g)
    r = torch.exp(logr)
    w = torch.sqrt(s * r).round()
    h = torch.sqrt(s / r).round()
    ok = (w > 0) & (h > 0) & (w <= width) & (h <= height)  # (n, attempts)
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((n,), -1))
    u = torch.rand(n, 2, generator=g)
    # fallback: centre crop of the whole image clamped to the ratio range
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        fw, fh = round(height * ratio[1]), height
    else:
        fw, fh = width, height
    idx = first.clamp(min=0)
    cw = torch.where(first >= 0, w.gather(1, idx[:, None])[:, 0], torch.full((n,), float(fw)))
    ch = torch.where(first >= 0, h.gather(1, idx[:, None])[:, 0], torch.full((n,), float(fh)))
    x0 = torch.where(first >= 0, torch.floor(u[:, 0] * (width - cw + 1)), torch.full((n,), float((width - fw) // 2)))
    y0 = torch.where(first >= 0, torch.floor(u[:, 1] * (height - ch + 1)), torch.full((n,), float((height - fh) // 2)))
    return torch.stack([x0, y0, cw, ch], dim=1)


@dataclass
class AugmentDraw:
    """Random parameters for a batch of images: every field has the batch as first dim."""

    boxes: torch.Tensor | None  # (n, 4) x0, y0, w, h
    flip: torch.Tensor  # (n,) bool
    jitter: torch.Tensor  # (n, 4) brightness, contrast, saturation factors and hue shift
    gray: torch.Tensor  # (n,) bool

    def slice(self, start: int, stop: int) -> "AugmentDraw":
        return AugmentDraw(
            None if self.boxes is None else self.boxes[start:stop],
            self.flip[start:stop], self.jitter[start:stop], self.gray[start:stop],
        )

    def to(self, device: torch.device) -> "AugmentDraw":
        """The draws on `device`, copied from pinned memory without waiting (CUDA); unchanged on the CPU."""
        if device.type == "cpu":
            return self

        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.pin_memory().to(device, non_blocking=True)

        return AugmentDraw(move(self.boxes), move(self.flip), move(self.jitter), move(self.gray))


def draw(spec: AugmentSpec, n: int, height: int, width: int, g: torch.Generator, crop: bool = True) -> AugmentDraw:
    """Draw the augmentation parameters of `n` images (the global batch)."""
    boxes = sample_crops(n, height, width, spec.crop_scale, spec.crop_ratio, g) if crop else None
    flip = (torch.rand(n, generator=g) < 0.5) if spec.hflip else torch.zeros(n, dtype=torch.bool)
    u = torch.rand(n, 4, generator=g)
    strength = torch.tensor(spec.color_jitter, dtype=torch.float32)
    offsets = strength * (2 * u - 1)  # uniform in [-strength, strength]
    factors = (1 + offsets[:, :3]).clamp(min=0)  # brightness, contrast, saturation factors
    jitter = torch.cat([factors, offsets[:, 3:]], dim=1)  # hue shift, fraction of a turn
    gray = torch.rand(n, generator=g) < spec.grayscale_p
    return AugmentDraw(boxes, flip, jitter, gray)


def _grey(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma (B, 1, H, W) of RGB in [0, 1]."""
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def _shift_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate hue by `shift` (fraction of a turn, (B,)) through HSV, as torchvision's adjust_hue."""
    r, g, b = x.unbind(1)
    maxc, _ = x.max(1)
    minc, _ = x.min(1)
    v = maxc
    delta = maxc - minc
    s = torch.where(maxc > 0, delta / maxc.clamp(min=1e-12), torch.zeros_like(maxc))
    dc = delta.clamp(min=1e-12)
    rc, gc, bc = (maxc - r) / dc, (maxc - g) / dc, (maxc - b) / dc
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(delta > 0, (h / 6.0) % 1.0, torch.zeros_like(h))
    h = (h + shift[:, None, None]) % 1.0
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    i = i.long() % 6
    choices_r = torch.stack([v, q, p, p, t, v], 1)
    choices_g = torch.stack([t, v, v, q, p, p], 1)
    choices_b = torch.stack([p, p, t, v, v, q], 1)
    sel = i[:, None]
    return torch.cat([c.gather(1, sel) for c in (choices_r, choices_g, choices_b)], dim=1)


def apply(images: torch.Tensor, d: AugmentDraw, spec: AugmentSpec) -> torch.Tensor:
    """Augment uint8 images (B, 3, H, W) with the drawn parameters; returns normalised float (B, 3, S, S).

    The decisions that skip work (any flip, any grey image) are read from the draws on the
    host, so nothing here waits for the device."""
    x = images.float().div_(255)
    B, _, H, W = x.shape
    S = spec.crop_size
    any_flip = d.flip.device.type != "cpu" or bool(d.flip.any())  # draws made on the device: assume some
    any_gray = d.gray.device.type != "cpu" or bool(d.gray.any())
    d = d.to(x.device)
    if d.boxes is not None or any_flip or (H, W) != (S, S):
        boxes = d.boxes if d.boxes is not None else torch.tensor([[0.0, 0.0, W, H]], device=x.device).expand(B, 4)
        x0, y0, bw, bh = boxes.unbind(1)
        sign = 1.0 - 2.0 * d.flip.float()
        theta = torch.zeros(B, 2, 3, device=x.device)
        theta[:, 0, 0] = bw / W * sign
        theta[:, 0, 2] = (2 * x0 + bw) / W - 1
        theta[:, 1, 1] = bh / H
        theta[:, 1, 2] = (2 * y0 + bh) / H - 1
        grid = F.affine_grid(theta, [B, 3, S, S], align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    j = d.jitter
    b, c, s, h = spec.color_jitter
    if b > 0:
        x = (x * j[:, 0, None, None, None]).clamp_(0, 1)
    if c > 0:
        mean = _grey(x).mean(dim=(1, 2, 3), keepdim=True)
        x = (mean + j[:, 1, None, None, None] * (x - mean)).clamp_(0, 1)
    if s > 0:
        gr = _grey(x)
        x = (gr + j[:, 2, None, None, None] * (x - gr)).clamp_(0, 1)
    if h > 0:
        x = _shift_hue(x, j[:, 3])
    if any_gray:
        x = torch.where(d.gray[:, None, None, None], _grey(x).expand_as(x), x)
    return normalize(x, spec)


@functools.lru_cache(maxsize=16)
def _mean_std(mean: tuple, std: tuple, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The (1, 3, 1, 1) mean and std on `device`, made once (a copy to the GPU is a host sync)."""
    return (torch.tensor(mean, device=device).view(1, 3, 1, 1), torch.tensor(std, device=device).view(1, 3, 1, 1))


def normalize(x: torch.Tensor, spec: AugmentSpec) -> torch.Tensor:
    mean, std = _mean_std(tuple(spec.mean), tuple(spec.std), x.device)
    return (x - mean) / std


def evaluate_transform(images: torch.Tensor, spec: AugmentSpec) -> torch.Tensor:
    """No augmentation: uint8 (B, 3, H, W) -> resized to the crop size and normalised."""
    x = images.float().div_(255)
    if x.shape[-2:] != (spec.crop_size, spec.crop_size):
        x = F.interpolate(x, size=(spec.crop_size, spec.crop_size), mode="bilinear", align_corners=False, antialias=True)
    return normalize(x, spec)
