"""e. The file loader's training crops, img/s per core, on real-size JPEGs.

A tree of JPEGs (quality 90) cut from scikit-image's photos at ImageNet's usual sizes: 40%
500x375, 15% 375x500, 15% 500x333, 10% 333x500, 10% 800x600, 5% 1280x960, 5% 300x225 (ILSVRC
train images are mostly 500 px on the long side, a few much larger). One process, one torch
thread, the files in the page cache, best of 3 passes:

    floor     PIL open + full decode, nothing else
    previous  the loader before this release: full decode, PILToTensor, torchvision's
              RandomResizedCrop(224, antialias) on the tensor
    loader    the pipeline's FileImages training item (decode.py): the box first, reduced-size
              JPEG decoding where the box allows it, the box alone resampled to 224
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

SIZES = [(500, 375)] * 8 + [(375, 500)] * 3 + [(500, 333)] * 3 + [(333, 500)] * 2 + [(800, 600)] * 2 + \
        [(1280, 960), (300, 225)]


def jpeg_tree(root: Path, n: int) -> list[str]:
    from skimage import data

    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    names = []
    for i in range(n):
        w, h = SIZES[i % len(SIZES)]
        img = Image.fromarray(photos[i % len(photos)]).resize((w, h), Image.BICUBIC)
        names.append(f"{i:04d}.JPEG")
        img.save(root / names[-1], quality=90)
    return names


def _best_rate(fn, items, repeats: int = 3) -> float:
    fn(items[0])
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        for item in items:
            fn(item)
        best = max(best, len(items) / (time.perf_counter() - t0))
    return best


def bench_loader(n: int = 120, size: int = 224) -> dict:
    from torchvision.transforms import v2 as T

    from localagg.data import decode
    from localagg.data.datasets import FileImages

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            names = jpeg_tree(root, n)
            previous_transform = T.Compose([T.PILToTensor(), T.RandomResizedCrop(size, scale=(0.2, 1.0), antialias=True)])

            def floor(name):
                with Image.open(root / name) as im:
                    im.load()

            def previous(name):
                with Image.open(root / name) as im:
                    return previous_transform(im.convert("RGB"))

            ds = FileImages(root, names, np.zeros(n, dtype=np.int64), size, train=True)
            draws = decode.draw_crops(n, torch.Generator().manual_seed(0))
            items = list(zip(range(n), draws))
            rates = {"floor": _best_rate(floor, names), "previous": _best_rate(previous, names),
                     "loader": _best_rate(lambda item: ds[item], items)}
    finally:
        torch.set_num_threads(threads)
    return {**rates, "images": n, "size": size, "speedup": rates["loader"] / rates["previous"],
            "of_floor": rates["loader"] / rates["floor"]}


if __name__ == "__main__":
    print(bench_loader())
