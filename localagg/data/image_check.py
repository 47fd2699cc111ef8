"""Parallel check that image files exist and decode, before any compute is spent on them."""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Sequence

from PIL import Image

from ..progress import track


def check_image(path: str | os.PathLike) -> str | None:
    """Return None if `path` decodes, else a one-line reason.

    JPEGs are decoded in draft mode (reduced scale), which reads the whole entropy-coded
    stream and so catches truncation, at a fraction of the cost of a full decode.
    """
    from .decode import ImageTooLarge, open_image

    try:
        with open_image(path) as im:
            if im.format == "JPEG":
                im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))
            im.load()
            if im.width < 1 or im.height < 1:
                return "empty image"
    except FileNotFoundError:
        return "file not found"
    except ImageTooLarge as exc:
        return str(exc).split(": ", 1)[1]
    except Exception as exc:  # PIL raises many types for corrupt data
        return f"does not decode ({type(exc).__name__}: {exc})"
    return None


def find_undecodable(paths: Sequence[str | os.PathLike], workers: int = 0, desc: str = "checking images") -> list[str]:
    """Return "path: reason" for every path in `paths` that fails `check_image`.

    `workers` = 0 uses all cores; 1 checks in this process (no pool).
    """
    paths = [str(p) for p in paths]
    workers = workers or (os.cpu_count() or 1)
    if workers == 1 or len(paths) < 64:
        results = [check_image(p) for p in track(paths, desc, total=len(paths))]
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            chunk = max(1, len(paths) // (workers * 16))
            results = list(track(pool.map(check_image, paths, chunksize=chunk), desc, total=len(paths)))
    return [f"{p}: {r}" for p, r in zip(paths, results) if r is not None]


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the header, without decoding the pixels."""
    with Image.open(path) as im:
        return im.size
