"""`make smoke-gpu`: the paper's scale, checked in a few minutes on a CUDA machine; writes
reports/gpu-smoke.md. On a machine without CUDA it says so and exits 0.

    1. ResNet-50 IR and LA pretraining at 224 px, batch 128, AMP (bfloat16), channels_last,
       from JPEG files in the ImageNet layout through the real loader (decode and random
       resized crop in loader workers, augmentation on the GPU): img/s over one epoch, and
       the floor, a bare forward/backward/SGD loop of the same backbone on tensors already on
       the GPU; peak GPU memory.
    2. faiss k-means of a 1,281,167 x 128 bank into 30,000 clusters, 20 iterations: one of the
       H = 10 clusterings LA runs every epoch (on the GPU when faiss has GPU support).
    3. The LA objective (forward, backward, bank update) at N = 1,281,167, k = 4096, H = 10,
       batch 128, against the dense similarities + top-k it cannot avoid.
    4. Detectron2 Faster R-CNN R50-C4 training iterations/s with the paper preset's protocol
       at 2 images per GPU (its 16 over 8 GPUs), multi-scale 480-800, on synthetic VOC scenes.

The JPEGs are crops of photos bundled in scikit-image, written to a temporary folder; nothing
is downloaded. `--cpu-dry-run OUT` runs every measurement at toy size on the CPU and writes
OUT (the tests use it: a GPU is not always at hand to check this script).

Run: make smoke-gpu   (python -m benchmarks.gpu_smoke)
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from localagg.io import write_text

OUT = Path("reports/gpu-smoke.md")
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "hubble_deep_field", "grass", "gravel", "brick")


@dataclass(frozen=True)
class Scale:
    images: int          # JPEG files of the pretraining set
    batch: int
    size: int            # crop side
    kmeans_points: int
    kmeans_clusters: int
    kmeans_iterations: int
    la_items: int        # memory bank rows of the LA objective
    la_k: int
    det_iterations: int
    det_sizes: tuple[int, ...]
    det_max_size: int
    det_rois: int        # ROIs per image (the protocol's 512)
    det_proposals: int   # proposals kept per image in training (the protocol's 2,000)
    workers: int


FULL = Scale(images=128 * 24, batch=128, size=224, kmeans_points=1_281_167, kmeans_clusters=30_000,
             kmeans_iterations=20, la_items=1_281_167, la_k=4096, det_iterations=30,
             det_sizes=tuple(range(480, 801, 32)), det_max_size=1333, det_rois=512, det_proposals=2000,
             workers=min(16, os.cpu_count() or 1))
DRY = Scale(images=32, batch=8, size=64, kmeans_points=2000, kmeans_clusters=20, kmeans_iterations=2,
            la_items=5000, la_k=64, det_iterations=2, det_sizes=(128,), det_max_size=160, det_rois=16,
            det_proposals=50, workers=0)


def _jpeg(job: tuple[Path, int, int]) -> None:
    from PIL import Image
    from skimage import data

    path, index, side = job
    rng = np.random.default_rng(index)
    img = np.asarray(getattr(data, PHOTOS[index % len(PHOTOS)])())
    img = np.repeat(img[:, :, None], 3, axis=2) if img.ndim == 2 else img[:, :, :3]
    h, w = img.shape[:2]
    ch, cw = int(h * rng.uniform(0.6, 1.0)), int(w * rng.uniform(0.6, 1.0))
    y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    crop = Image.fromarray(np.ascontiguousarray(img[y:y + ch, x:x + cw]))
    crop.resize((side * 4 // 3, side), Image.BILINEAR).save(path, quality=90)


def imagenet_tree(root: Path, images: int, side: int) -> Path:
    """train/ and val/ class folders of JPEGs (10 classes), written in parallel."""
    jobs = []
    for split, count in (("train", images), ("val", max(10, images // 8))):
        for i in range(count):
            folder = root / split / f"n{i % 10:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            jobs.append((folder / f"{split}_{i:06d}.JPEG", i, side))
    with concurrent.futures.ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
        list(pool.map(_jpeg, jobs, chunksize=64))
    return root


def pretraining(scale: Scale, device: str, tmp: Path) -> dict:
    """IR then LA img/s from JPEGs through the loader, the in-memory floor, peak GPU memory."""
    from localagg.data.augment import AugmentSpec
    from localagg.data.real_classification import prepare_imagenet
    from localagg.models.config import ModelConfig
    from localagg.training.loop import Trainer
    from localagg.training.methods.instance_recognition import InstanceRecognition, IRConfig
    from localagg.training.methods.local_aggregation import LAConfig, LocalAggregation

    from .pretrain import _bare_img_per_s

    tree = imagenet_tree(tmp / "imagenet", scale.images, side=int(scale.size * 1.5))
    prepare_imagenet(tree, tmp / "object", check_images=False, workers=scale.workers or 1)
    model = ModelConfig(arch="resnet50", stem="imagenet")
    aug = AugmentSpec(crop_size=scale.size)  # the paper's recipe (the AugmentSpec defaults)
    common = dict(batch_size=scale.batch, device=device, num_workers=scale.workers, knn_k=5)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    ir = Trainer(InstanceRecognition(IRConfig(epochs=1, num_negatives=min(4096, scale.images), **common)), model, aug,
                 tmp / "object", tmp / "ir")
    ir_result = ir.run()
    ir.export(tmp / "ir.pt")
    la = Trainer(LocalAggregation(LAConfig(epochs=1, k=min(4096, scale.images), num_kmeans=10,
                                           num_clusters=max(2, scale.images // 40), **common)),
                 model, aug, tmp / "object", tmp / "la", init_from=tmp / "ir.pt")
    la_result = la.run()
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    floor = _bare_img_per_s(model, scale.batch, scale.size, max(3, scale.images // scale.batch),
                            torch.device(device), la.channels_last)
    return {"ir": ir_result.history[-1]["img_per_s"], "la": la_result.history[-1]["img_per_s"], "floor": floor,
            "peak_gib": peak, "amp": la.amp, "workers": scale.workers, "steps": scale.images // scale.batch}


def kmeans(scale: Scale) -> dict:
    from localagg import clustering

    rng = np.random.default_rng(0)
    bank = rng.standard_normal((scale.kmeans_points, 128), dtype=np.float32)
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    t0 = time.perf_counter()
    clustering.run_kmeans(bank, scale.kmeans_clusters, 1, iterations=scale.kmeans_iterations)
    return {"seconds": time.perf_counter() - t0, "gpu": clustering.faiss_has_gpu()}


def detection(scale: Scale, device: str, tmp: Path) -> dict:
    """Training iterations/s of R50-C4 with the preset's protocol, 2 images per iteration."""
    from detectron2.data import DatasetMapper
    from detectron2.modeling import build_model
    from detectron2.solver import build_optimizer
    from detectron2.utils.events import EventStorage

    from localagg.data import embedded
    from localagg.data.synthetic_detection import build_synthetic_voc
    from localagg.data.voc import prepare_voc, read_voc_manifest
    from localagg.detection import DetectionConfig, build_cfg, register_voc_manifest
    from localagg.detection.data import IterationBatches, voc_dicts

    rng = np.random.default_rng(0)
    items = rng.integers(0, 256, (60, 28, 28), dtype=np.uint8)
    labels = np.arange(60) % len(embedded.FASHION_CLASSES)
    devkit = tmp / "voc" / "VOCdevkit"
    side = max(scale.det_sizes)  # items of 28 px scaled to a sixth to a third of the image
    build_synthetic_voc(devkit, items[:40], labels[:40], items[40:], labels[40:], embedded.FASHION_CLASSES,
                        num_trainval=16, num_test=2, image_size=side, scale_range=(side / 168, side / 84))
    prepare_voc(devkit, tmp / "voc", trainval=[("VOC2007", "trainval")], test=[("VOC2007", "test")],
                classes=embedded.FASHION_CLASSES, check_images=False, name="synthetic_voc")
    manifest = read_voc_manifest(tmp / "voc" / "detection.json")
    train, test = register_voc_manifest(manifest, "smoke")
    protocol = DetectionConfig(ims_per_batch=2, num_gpus=1, device=device,
                               norm="SyncBN" if device == "cuda" else "BN", min_size_train=scale.det_sizes,
                               max_size_train=scale.det_max_size, min_size_test=min(scale.det_sizes),
                               max_size_test=scale.det_max_size, num_workers=scale.workers,
                               batch_size_per_image=scale.det_rois, proposals_train=scale.det_proposals)
    cfg = build_cfg(protocol, "resnet50", len(manifest["classes"]), train, test, tmp / "det")
    model = build_model(cfg).train()
    optimizer = build_optimizer(cfg, model)
    stream = IterationBatches(voc_dicts(manifest, "VOC2007", "trainval"), DatasetMapper(cfg, is_train=True), 2, 0)

    def step(i: int) -> None:
        loss = sum(model(stream[i]).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    warmup = 3 if device == "cuda" else 1
    with EventStorage(0):  # Detectron2's losses log into it
        for i in range(warmup):
            step(i)
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for i in range(warmup, warmup + scale.det_iterations):
            step(i)
        if device == "cuda":
            torch.cuda.synchronize()
    return {"iter_per_s": scale.det_iterations / (time.perf_counter() - t0)}


def report(scale: Scale, device: str, out: Path) -> str:
    from .objective import bench_la_objective

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        print("1. ResNet-50 IR and LA from JPEG files ...", file=sys.stderr)
        pre = pretraining(scale, device, Path(tmp))
        print("2. faiss k-means ...", file=sys.stderr)
        km = kmeans(scale)
        print("3. LA objective ...", file=sys.stderr)
        la = bench_la_objective(device=device, num_items=scale.la_items, k=scale.la_k, batch=scale.batch, repeats=5,
                                num_clusters=min(30_000, scale.la_items))
        print("4. Detectron2 R50-C4 ...", file=sys.stderr)
        det = detection(scale, device, Path(tmp))
    name = torch.cuda.get_device_name(0) if device == "cuda" else "CPU (dry run at toy size)"
    peak = f"{pre['peak_gib']:.1f} GiB" if pre["peak_gib"] is not None else "n/a"
    rows = [
        ("IR pretraining, ResNet-50, JPEG files through the loader", f"{pre['ir']:,.0f} img/s",
         f"{pre['ir'] / pre['floor']:.2f} of the floor"),
        ("LA pretraining, ResNet-50, JPEG files through the loader", f"{pre['la']:,.0f} img/s",
         f"{pre['la'] / pre['floor']:.2f} of the floor"),
        ("floor: forward/backward/SGD on tensors in GPU memory", f"{pre['floor']:,.0f} img/s", ""),
        ("peak GPU memory (IR and LA runs)", peak, ""),
        (f"faiss k-means, {scale.kmeans_points:,} x 128 into {scale.kmeans_clusters:,} clusters, "
         f"{scale.kmeans_iterations} iterations ({'GPU' if km['gpu'] else 'CPU: faiss has no GPU support here'})",
         f"{km['seconds']:.1f} s", f"x 10 clusterings = {10 * km['seconds']:.0f} s per LA epoch"),
        (f"LA objective + bank update, N = {scale.la_items:,}, k = {scale.la_k}, H = 10, batch {scale.batch}",
         f"{la['la_seconds'] * 1e3:.1f} ms", f"{la['ratio']:.2f} of similarities + top-k ({la['floor_seconds'] * 1e3:.1f} ms)"),
        ("Detectron2 Faster R-CNN R50-C4, 2 images / iteration, multi-scale "
         f"{min(scale.det_sizes)}-{max(scale.det_sizes)}", f"{det['iter_per_s']:.2f} it/s",
         f"12,500 iterations: {12_500 / det['iter_per_s'] / 3600:.1f} h per seed on 8 such GPUs"),
    ]
    epoch_hours = 1_281_167 / max(pre["la"], 1e-9) / 3600
    lines = [
        "# GPU smoke check",
        "",
        f"Generated by `make smoke-gpu` on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC in "
        f"{time.perf_counter() - started:.0f} s. Device: {name}; torch {torch.__version__}; "
        f"AMP {'bf16' if pre['amp'] else 'off'}; {pre['workers']} loader workers; batch {scale.batch} at {scale.size} px; "
        f"one epoch of {pre['steps']} steps over {scale.images:,} JPEGs.",
        "",
        "| measured | value | note |",
        "| --- | --- | --- |",
        *[f"| {a} | {b} | {c} |" for a, b, c in rows],
        "",
        f"At the LA rate above, one ImageNet epoch takes {epoch_hours:.1f} h on this one device (the paper's 200 "
        "epochs: divide by the number of GPUs, plus 10 k-means per epoch).",
        "",
    ]
    text = "\n".join(lines)
    write_text(out, text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cpu-dry-run", type=Path, default=None, metavar="OUT",
                        help="run every measurement at toy size on the CPU and write OUT (tests)")
    args = parser.parse_args(argv)
    if args.cpu_dry_run is not None:
        print(report(DRY, "cpu", args.cpu_dry_run))
        return 0
    if not torch.cuda.is_available():
        print("smoke-gpu: no CUDA device on this machine; nothing measured (run it on a GPU machine).")
        return 0
    print(report(FULL, "cuda", OUT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
