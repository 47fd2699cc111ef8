"""Evaluation geometry on batched float tensors (B, C, H, W), on any device.

The linear-readout protocol (la-method.md): resize the shorter side to 256 (256/224 of the
crop), then take the centre 224 crop, or ten crops: the four corners and the centre, and
the same five of the horizontally flipped image, with softmax outputs averaged over them.

Everything here reproduces torchvision's tensor kernels (`Resize(int)`, `CenterCrop`,
`TenCrop`) on a whole batch at once:
    resize_shorter: new short side = size, new long side = int(size * long / short)
    center_crop:    top = int(round((H - size) / 2)), left likewise (Python rounding)
    ten_crop order: 0 tl, 1 tr, 2 bl, 3 br, 4 centre, then 5..9 the same five crops of the
                    horizontally flipped image (so crop 5 is the flip of crop 1, the
                    top-right one, and crop 6 the flip of crop 0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def resize_shorter(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize float images (B, C, H, W) so the shorter side is `size` (antialiased bilinear)."""
    h, w = images.shape[-2:]
    short, long = min(h, w), max(h, w)
    if short == size:
        return images
    new_long = int(size * long / short)
    out = (size, new_long) if h <= w else (new_long, size)
    return F.interpolate(images, size=out, mode="bilinear", align_corners=False, antialias=True)


def _check_fits(images: torch.Tensor, size: int) -> None:
    h, w = images.shape[-2:]
    if size > h or size > w:
        raise ValueError(f"crop size {size} is larger than the images ({h}x{w}); resize them first")


def center_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """The centre `size` x `size` crop of images (..., H, W), placed as torchvision places it."""
    _check_fits(images, size)
    h, w = images.shape[-2:]
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return images[..., top : top + size, left : left + size]


def five_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, 5, C, size, size): top-left, top-right, bottom-left, bottom-right, centre."""
    _check_fits(images, size)
    h, w = images.shape[-2:]
    corners = [images[..., y : y + size, x : x + size] for y, x in ((0, 0), (0, w - size), (h - size, 0), (h - size, w - size))]
    return torch.stack(corners + [center_crop(images, size)], dim=1)


def ten_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, 10, C, size, size): `five_crop` of the images, then of their mirror images.

    Call it on images already resized (`resize_shorter(images, round(size * 256 / 224))`).
    Crop 4 is the centre crop, so one pass gives the centre-crop and the 10-crop results.
    """
    return torch.cat([five_crop(images, size), five_crop(images.flip(-1), size)], dim=1)


def random_crop(images: torch.Tensor, size: int, top_left: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Per-image `size` x `size` crops at `top_left` (B, 2) = (y0, x0), mirrored where `flip` (B,) is True.

    Exact pixel slices (no resampling); the offsets and flips are drawn by the caller.
    """
    _check_fits(images, size)
    B, C = images.shape[:2]
    dev = images.device
    ar = torch.arange(size, device=dev)
    top_left, flip = top_left.to(dev), flip.to(dev)
    rows = top_left[:, 0, None] + ar  # (B, S)
    cols = torch.where(flip[:, None], top_left[:, 1, None] + size - 1 - ar, top_left[:, 1, None] + ar)  # (B, S)
    b = torch.arange(B, device=dev)[:, None, None]
    out = images[b, :, rows[:, :, None], cols[:, None, :]]  # (B, S, S, C): advanced indices first
    return out.permute(0, 3, 1, 2).contiguous()
