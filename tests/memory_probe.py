"""Peak memory of one streamed pass at a given training-set size, measured in a fresh process.

    python -m tests.memory_probe KIND N    prints the peak resident memory (bytes) that the
                                           pass added above what was resident before it

Tests run it at N and 4N: a pass that streams its training set adds the same at both sizes;
one that holds the N training features adds N x D x 4 bytes more at 4N. (Torch's CPU
allocations are not visible to tracemalloc, and its profiler misses frees made by other
threads, so the kernel's resident-set high-water mark is the measure.)
"""

from __future__ import annotations

import resource
import sys
import tempfile
from pathlib import Path

import torch


def _resident() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _knn_eval(kind: str, n: int):
    import localagg.knn as knn
    from localagg.data.augment import AugmentSpec
    from localagg.evaluation.transfer import knn_eval, network_space_fn, pixel_space_fn
    from localagg.models.backbone import EmbeddingNet

    from .conftest import LazyImages

    knn.BANK_CHUNK = 512
    if kind == "network":
        torch.manual_seed(0)
        size, fn = 32, network_space_fn(EmbeddingNet("resnet18", "imagenet", 128), AugmentSpec(crop_size=32), "cpu")
    else:
        size, fn = 16, pixel_space_fn(AugmentSpec(crop_size=16), 16)
    train, val = LazyImages(n, size=size), LazyImages(64, size=size, seed=1)
    return lambda: knn_eval(fn, train, val, 4, k=10, batch_size=128, device="cpu", views=True)


def _supervised_monitor(n: int):
    import localagg.knn as knn
    from localagg.data.augment import AugmentSpec
    from localagg.models.config import ModelConfig
    from localagg.training.loop import Trainer
    from localagg.training.methods.supervised import Supervised, SupervisedConfig

    from .conftest import make_arrays_dataset

    knn.BANK_CHUNK = 512
    data = Path(tempfile.mkdtemp()) / "object"
    make_arrays_dataset(data, n_train=n, n_val=64, size=16)
    aug = AugmentSpec(crop_size=16, mean=(0.5,) * 3, std=(0.25,) * 3)
    t = Trainer(Supervised(SupervisedConfig(epochs=1, batch_size=8, knn_k=10, device="cpu")),
                ModelConfig(arch="resnet18", stem="imagenet"), aug, data, data.parent / "ck", val_dir=data)
    return lambda: t.knn_top1_streamed(t.val, t.train_eval, pooled=True)


PROBES = {
    "knn_eval_network": lambda n: _knn_eval("network", n),   # D = 128 + 512 per training image if held
    "knn_eval_pixels": lambda n: _knn_eval("pixels", n),     # D = 3 x 16 x 16
    "supervised_monitor": _supervised_monitor,               # D = 512
}
FEATURE_DIMS = {"knn_eval_network": 640, "knn_eval_pixels": 768, "supervised_monitor": 512}


def main(kind: str, n: int) -> int:
    torch.set_num_threads(1)
    run = PROBES[kind](n)
    before = _resident()
    run()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before


if __name__ == "__main__":
    print(main(sys.argv[1], int(sys.argv[2])))
