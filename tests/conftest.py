"""Shared fixtures: tiny datasets in the prepared format, tiny configs."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("LOCALAGG_NO_PROGRESS", "1")

# The two integration files that run the whole pipeline under DVC take most of the suite's time
# (about 3.5 and 3 minutes on 2 cores). `make test` runs files on 2 xdist workers in collection
# order (--dist loadfile --no-loadscope-reorder): collected first, each starts on its own worker
# and the short files fill in behind them.
LONGEST_FIRST = ("test_dvc_pipeline.py", "test_paper_path.py")


def pytest_collection_modifyitems(config, items):
    def rank(item):
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the order within each file is kept


def make_arrays_dataset(out_dir, n_train=32, n_val=16, size=16, num_classes=4, seed=0, name="tiny"):
    """A tiny kind-"arrays" dataset of class-dependent blobs (learnable, deterministic)."""
    from localagg.data.manifest import write_arrays_dataset

    rng = np.random.default_rng(seed)

    def split(n):
        labels = np.arange(n) % num_classes
        yy, xx = np.mgrid[0:size, 0:size]
        images = np.empty((n, size, size), dtype=np.uint8)
        for i, c in enumerate(labels):
            cy, cx = (size / 4) * (1 + 2 * (c // 2)), (size / 4) * (1 + 2 * (c % 2))
            blob = 200 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (size / 8) ** 2))
            images[i] = np.clip(blob + rng.normal(0, 20, (size, size)), 0, 255)
        return images, labels

    return write_arrays_dataset(out_dir, name, [f"c{i}" for i in range(num_classes)],
                                {"train": split(n_train), "val": split(n_val)})


@pytest.fixture
def tiny_data(tmp_path):
    d = tmp_path / "object"
    make_arrays_dataset(d)
    return d


class CodeRunningPickle:
    """A pickle that runs code (it touches `marker`) when unpickled without weights_only: what a
    crafted model or checkpoint file would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        from pathlib import Path

        return (Path.touch, (Path(self.marker),))


class LazyImages:
    """n grey-ish uint8 images (3, size, size) made from their index when asked (nothing held
    but the labels), in the `ArrayImages.batch` interface: memory tests at N and 4N."""

    def __init__(self, n: int, size: int = 16, num_classes: int = 4, seed: int = 0):
        import torch

        self.n, self.size, self.seed = n, size, seed
        self.labels = torch.arange(n) % num_classes

    def __len__(self) -> int:
        return self.n

    def batch(self, indices):
        import torch

        out = torch.empty(len(indices), 3, self.size, self.size, dtype=torch.uint8)
        for row, i in enumerate(indices.tolist()):
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
            out[row] = torch.randint(0, 256, (1, self.size, self.size), generator=g, dtype=torch.uint8)
            out[row, :, : self.size // 2] //= 1 + int(self.labels[i])  # some class structure
        return out, self.labels[indices], indices


_STORES: list = []  # the rendezvous stores of this pytest process, alive until it exits


def rendezvous(tmp_path=None) -> str:
    """The address of a TCP store for a 2-process gloo test, bound (port 0) and held by this
    process: no port is found free, closed and then raced for by a concurrent test, and the
    workers' teardown has no shared file to wait on (a file:// store deadlocked there)."""
    import torch.distributed as dist

    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    _STORES.append(store)
    return f"127.0.0.1:{store.port}"


def init_gloo(address: str, rank: int, world_size: int, timeout_s: float = 300.0) -> None:
    """Join the gloo group whose store `rendezvous` made."""
    import datetime

    import torch.distributed as dist

    host, port = address.rsplit(":", 1)
    timeout = datetime.timedelta(seconds=timeout_s)
    store = dist.TCPStore(host, int(port), is_master=False, timeout=timeout)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size, timeout=timeout)


def gloo_worker(fn):
    """A 2-process test worker that ends with os._exit: 0 once `fn` returns, 1 after printing
    its traceback. torch 2.3's gloo teardown (destroy_process_group, or the group's destructor
    at exit) deadlocked here now and then, ranks stuck in it for minutes; the stages never tear
    the group down either (stages/launch.py)."""
    import functools
    import sys
    import traceback

    @functools.wraps(fn)
    def run(*args, **kwargs):
        code = 0
        try:
            fn(*args, **kwargs)
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    return run
