"""Pretraining throughput against a bare training loop of the same backbone.

The floor is the least any pretraining step does: forward, a trivial loss, backward and an
SGD step of the same backbone, at the same batch size and input size, on tensors already in
memory. The measured loop is the real LA training loop (data fetch, batched augmentation,
objective, memory-bank update), its img/s as the trainer logs it over one epoch (clustering
and the kNN monitor excluded: they run once per epoch). Target: ratio >= 0.9.

Run: python -m benchmarks.pretrain   (prints the dict; writes no file)
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from localagg.data.augment import AugmentSpec
from localagg.data.manifest import write_arrays_dataset
from localagg.models import build_model
from localagg.models.config import ModelConfig
from localagg.training.loop import Trainer, param_groups
from localagg.training.methods.instance_recognition import InstanceRecognition, IRConfig
from localagg.training.methods.local_aggregation import LAConfig, LocalAggregation


def _dataset(root: Path, n: int, size: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
    labels = np.arange(n) % 10
    write_arrays_dataset(root / "data", "bench", [str(i) for i in range(10)],
                         {"train": (images, labels), "val": (images[:256], labels[:256])})
    return root / "data"


def _bare_img_per_s(model_cfg: ModelConfig, batch: int, size: int, steps: int, device: torch.device,
                    channels_last: bool) -> float:
    torch.manual_seed(0)
    model = build_model(model_cfg.arch, model_cfg.stem, model_cfg.embedding_dim).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(param_groups(model, 1e-4), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, size, size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = model(x).float().sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return steps * batch / (time.perf_counter() - t0)


def bench_pretrain_throughput(arch: str = "resnet18", stem: str = "imagenet", size: int = 40, batch: int = 64,
                              steps: int = 30, device: str = "auto", k: int = 1024, num_items: int | None = None) -> dict:
    """img/s of one LA epoch of `steps` steps vs the bare loop; the embedded default's shapes by default."""
    model_cfg = ModelConfig(arch=arch, stem=stem)
    aug = AugmentSpec(crop_size=size, crop_scale=(0.3, 1.0), color_jitter=(0.4, 0.4, 0.0, 0.0), grayscale_p=0.0)
    n = num_items or batch * steps
    with tempfile.TemporaryDirectory() as tmp:
        data = _dataset(Path(tmp), n, size)
        common = dict(batch_size=batch, device=device, knn_k=20)
        ir = Trainer(InstanceRecognition(IRConfig(epochs=1, num_negatives=0, **common)), model_cfg, aug, data,
                     Path(tmp) / "ir")
        ir.run(stop_after_steps=1)
        ir.export(Path(tmp) / "ir.pt")
        la = Trainer(LocalAggregation(LAConfig(epochs=1, k=min(k, n), num_kmeans=3, num_clusters=max(2, n // 50),
                                               **common)), model_cfg, aug, data, Path(tmp) / "la",
                     init_from=Path(tmp) / "ir.pt")
        result = la.run()
        loop = result.history[-1]["img_per_s"]
        bare = _bare_img_per_s(model_cfg, batch, size, steps, la.device, la.channels_last)
    return {"pretrain_img_per_s": loop, "bare_img_per_s": bare, "ratio": loop / bare, "arch": arch, "stem": stem,
            "size": size, "batch": batch, "steps": steps, "device": str(la.device), "amp": la.amp,
            "threads": torch.get_num_threads()}


if __name__ == "__main__":
    print(bench_pretrain_throughput())
