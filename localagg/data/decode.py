"""Decoding file datasets (ImageNet, Places205): the crop is chosen before the pixels are decoded.

Geometry, in the pixels of the full image (W x H), as torchvision computes it:
    train  RandomResizedCrop(S, scale, ratio): up to 10 attempts of area W H u_a (scaled into
           `scale`) and aspect exp(log-uniform in `ratio`); the first that fits wins, at
           x0 = floor(u_x (W - w + 1)), y0 = floor(u_y (H - h + 1)); else a centre crop clamped
           to `ratio`
    eval   Resize(R) then CenterCrop(S): the centre S R'/R x S R'/R box, R' the shorter side
The uniforms u come from the caller (`draw_crops`: one row per image of a global batch, from
the step's generator), so the crops are a function of (seed, epoch, step, position) and not of
the loader workers: 1 or W processes and any worker count or persistence see the same crops.

CPU decoding (`decode_box`): PIL's JPEG draft mode first decodes at 1/2, 1/4 or 1/8 of the
size when the box still has at least S pixels there (DCT scaling), then the box alone is
resampled to S x S (Pillow's antialiased bilinear, `Image.resize(box=...)`): the full image is
never converted to a tensor. `make bench` measures it against today's decode-then-crop and a
bare decode floor.

Device decoding (`ImageBytes`, `decode_on_device`): the loader workers only read the file and
its header and compute the box; the main process decodes the JPEG bytes with
torchvision.io.decode_jpeg on the training device (nvjpeg on CUDA) and crops and resizes
there. Files that are not plain RGB or grey JPEGs (CMYK, PNG under a .JPEG name) are decoded
by the worker instead, and so are JPEGs over DEVICE_MAX_PIXELS (decoded at a reduced DCT scale
on the CPU rather than at full size in GPU memory).

Size policy (`open_image`): localagg reads images of up to MAX_PIXELS (16,384 x 16,384) and
lifts PIL's decompression-bomb limit (89 Mpx: a warning on every decode, an error at twice
that) for them: a big JPEG costs little here, as draft mode decodes it at 1/8 of its side.
A larger image is refused, naming the file: by `prepare`'s image check, or when a stage
reads it (prepare.check_images: false); list it in prepare.*.exclude or downscale it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import UserError

Image.MAX_IMAGE_PIXELS = None  # PIL's bomb limit is replaced by MAX_PIXELS below (the size policy)

ATTEMPTS = 10
DRAW_WIDTH = 2 * ATTEMPTS + 2  # per image: (u_area, u_ratio) x ATTEMPTS, then (u_x, u_y)


def draw_crops(n: int, g: torch.Generator) -> torch.Tensor:
    """The uniforms (n, DRAW_WIDTH) of n images' RandomResizedCrop boxes (float64)."""
    return torch.rand(n, DRAW_WIDTH, generator=g, dtype=torch.float64)


def crop_box(width: int, height: int, u, scale: tuple[float, float], ratio: tuple[float, float]) -> tuple[int, int, int, int]:
    """(x0, y0, w, h) of torchvision's RandomResizedCrop for an image, from its uniforms `u`."""
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for a in range(ATTEMPTS):
        target = area * (scale[0] + (scale[1] - scale[0]) * float(u[2 * a]))
        aspect = math.exp(log_lo + (log_hi - log_lo) * float(u[2 * a + 1]))
        w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            x0 = int(float(u[-2]) * (width - w + 1))
            y0 = int(float(u[-1]) * (height - h + 1))
            return x0, y0, w, h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def eval_box(width: int, height: int, resize: int, size: int) -> tuple[float, float, float, float]:
    """(x0, y0, w, h) in full-image pixels of Resize(resize) + CenterCrop(size)."""
    scale = min(width, height) / resize
    side = min(size * scale, width, height)
    return (width - side) / 2, (height - side) / 2, side, side


MAX_PIXELS = 16384 * 16384
DEVICE_MAX_PIXELS = 4096 * 4096


class ImageTooLarge(UserError):
    pass


def open_image(path) -> Image.Image:
    """Image.open under the size policy (module docstring): the header is read, not the pixels."""
    im = Image.open(path)
    width, height = im.size
    if width * height > MAX_PIXELS:
        im.close()
        raise ImageTooLarge(f"{path}: the image is {width:,} x {height:,} pixels, more than the {MAX_PIXELS:,} "
                            "localagg reads; downscale it, or list it in prepare.object.exclude (or "
                            "prepare.transfer.exclude) and rerun `dvc repro prepare`.")
    return im


def decode_box(path, box: tuple[float, float, float, float], size: int) -> torch.Tensor:
    """The `box` (x0, y0, w, h) of the image at `path`, resampled to uint8 (3, size, size)."""
    with open_image(path) as im:
        return _resample(im, box, size)


def _resample(im: Image.Image, box, size: int) -> torch.Tensor:
    width, height = im.size
    x0, y0, w, h = box
    if im.format == "JPEG":
        # the largest DCT reduction at which the box keeps at least `size` pixels on each side
        im.draft("RGB", (max(1, math.ceil(width * size / w)), max(1, math.ceil(height * size / h))))
    fx, fy = im.size[0] / width, im.size[1] / height
    rgb = im if im.mode == "RGB" else im.convert("RGB")
    if rgb.size == (size, size) and (x0, y0, w, h) == (0, 0, width, height):
        out = rgb
    else:
        out = rgb.resize((size, size), Image.BILINEAR, box=(x0 * fx, y0 * fy, (x0 + w) * fx, (y0 + h) * fy))
    return torch.from_numpy(np.array(out)).permute(2, 0, 1).contiguous()


@dataclass
class ImageBytes:
    """What a worker hands over for device decoding: the file's bytes and the crop box, or, for
    a file the device decoder cannot read, the decoded crop itself (`pixels`)."""

    data: torch.Tensor | None  # (L,) uint8, the encoded file
    box: tuple[float, float, float, float]
    pixels: torch.Tensor | None = None  # (3, S, S) uint8


def read_for_device(path, box_of, size: int) -> ImageBytes:
    """The file and its box (`box_of(width, height)`); decoded here when it is not a plain JPEG."""
    with open_image(path) as im:
        box = box_of(*im.size)
        if im.format == "JPEG" and im.mode in ("RGB", "L") and im.width * im.height <= DEVICE_MAX_PIXELS:
            with open(path, "rb") as f:
                return ImageBytes(torch.frombuffer(bytearray(f.read()), dtype=torch.uint8), box)
        return ImageBytes(None, box, _resample(im, box, size))


def decode_on_device(items: list[ImageBytes], size: int, device: torch.device) -> torch.Tensor:
    """uint8 (B, 3, size, size) on `device`: each JPEG decoded there (nvjpeg on CUDA), its box
    cut out and resized (antialiased bilinear, as the CPU path)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    out = torch.empty(len(items), 3, size, size, dtype=torch.uint8, device=device)
    for i, item in enumerate(items):
        if item.pixels is not None:
            out[i] = item.pixels.to(device, non_blocking=True)
            continue
        img = decode_jpeg(item.data, mode=ImageReadMode.RGB, device=device)  # (3, H, W)
        x0, y0, w, h = item.box
        crop = img[:, int(y0) : int(y0) + max(1, round(h)), int(x0) : int(x0) + max(1, round(w))]
        out[i] = F.interpolate(crop[None].float(), size=(size, size), mode="bilinear", align_corners=False,
                               antialias=True)[0].round_().clamp_(0, 255).to(torch.uint8)
    return out


def collate_bytes(batch):
    """DataLoader collate for device decoding: (list of ImageBytes, labels (B,), indices (B,))."""
    items, labels, indices = zip(*batch)
    return list(items), torch.stack(labels), torch.as_tensor(indices)
