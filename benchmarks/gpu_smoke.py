"""`make smoke-gpu`: the paper's scale, checked in a few minutes on a CUDA machine; writes
reports/gpu-smoke.md and reports/gpu-smoke.json (the throughput `localagg plan` then uses).
On a machine without CUDA it says so and exits 0.

    1. ResNet-50 IR at 224 px on one GPU, then LA through the real stage (`localagg
       pretrain-la` relaunched under torchrun: one process per visible GPU, NCCL, SyncBN, the
       paper preset's recipe) for a few hundred steps, from real-size JPEG files (crops of
       photos, 300-500 px, as ImageNet's) through the loader and the GPU decoder; img/s
       against the floor (forward/backward/SGD on tensors already on the GPU), peak memory.
    2. One full LA clustering's k-means: 1,281,167 x 128 into 30,000 clusters, 20
       iterations, by the sharded torch k-means on the GPU (LA runs 10 per epoch).
    3. The LA objective (forward, backward, bank update) at N = 1,281,167, k = 4096, H = 10.
    4. The kNN monitor at N = 1,281,167: 50,000 queries streamed against the bank, top-200.
    5. A linear readout (the paper's pooling, 5 layers) of the LA model from the JPEGs.
    6. Detectron2 Faster R-CNN R50-C4 training iterations/s with the paper preset's protocol
       at 2 images per GPU (its 16 over 8 GPUs), multi-scale 480-800, on synthetic VOC scenes.

The JPEGs are crops of photos bundled in scikit-image, written to a temporary folder; nothing
is downloaded. `--cpu-dry-run OUT` runs every measurement at toy size on the CPU (LA on 2 gloo
processes) and writes OUT (the tests use it: a GPU is not always at hand to check this script).

Run: make smoke-gpu   (python -m benchmarks.gpu_smoke)
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
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

REPO = Path(__file__).resolve().parent.parent
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
    knn_queries: int     # the kNN monitor's validation images
    side: int            # shorter side of the JPEGs (ImageNet's are ~300-500 px)


FULL = Scale(images=128 * 200, batch=128, size=224, kmeans_points=1_281_167, kmeans_clusters=30_000,
             kmeans_iterations=20, la_items=1_281_167, la_k=4096, det_iterations=30,
             det_sizes=tuple(range(480, 801, 32)), det_max_size=1333, det_rois=512, det_proposals=2000,
             workers=min(16, os.cpu_count() or 1), knn_queries=50_000, side=375)
DRY = Scale(images=32, batch=8, size=64, kmeans_points=2000, kmeans_clusters=20, kmeans_iterations=2,
            la_items=5000, la_k=64, det_iterations=2, det_sizes=(128,), det_max_size=160, det_rois=16,
            det_proposals=50, workers=0, knn_queries=500, side=96)


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
    """IR on one device, then LA through the stage under torchrun on every visible GPU (2 gloo
    processes in the dry run), from JPEGs; the in-memory floor; peak GPU memory."""
    import subprocess

    import yaml

    from localagg.data.augment import AugmentSpec
    from localagg.data.real_classification import prepare_imagenet
    from localagg.models.config import ModelConfig
    from localagg.training.loop import Trainer
    from localagg.training.methods.instance_recognition import InstanceRecognition, IRConfig

    from .pretrain import _bare_img_per_s

    work = tmp / "work"  # the stage's working directory: data/prepared/object, models/ir.pt, params.yaml
    tree = imagenet_tree(tmp / "imagenet", scale.images, side=scale.side)
    prepare_imagenet(tree, work / "data/prepared/object", check_images=False, workers=scale.workers or 1)
    model = ModelConfig(arch="resnet50", stem="imagenet")
    aug = AugmentSpec(crop_size=scale.size)  # the paper's recipe (the AugmentSpec defaults)
    common = dict(batch_size=scale.batch, device=device, num_workers=scale.workers, knn_k=5)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    ir = Trainer(InstanceRecognition(IRConfig(epochs=1, num_negatives=min(4096, scale.images), **common)), model, aug,
                 work / "data/prepared/object", tmp / "ir")
    ir_result = ir.run()
    ir.export(work / "models/ir.pt")
    ir_peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    floor = _bare_img_per_s(model, scale.batch, scale.size, max(3, min(50, scale.images // scale.batch)),
                            torch.device(device), ir.channels_last)
    del ir
    if device == "cuda":
        torch.cuda.empty_cache()

    world = torch.cuda.device_count() if device == "cuda" else 2
    params = yaml.safe_load((REPO / "stages/presets/paper-resnet50-v1.yaml").read_text())  # v1, as the IR model above
    params["prepare"]["object"]["root"] = str(tree)
    params["augment"]["crop_size"] = scale.size
    params["pretrain_la"].update(epochs=1, lr_drops=[], batch_size=scale.batch, num_processes=world, device=device,
                                 num_workers=scale.workers, knn_k=5, k=min(4096, scale.images),
                                 num_clusters=max(2, scale.images // 40))
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run([sys.executable, "-m", "stages", "pretrain-la", "--params", "params.yaml"], cwd=work,
                          env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"pretrain-la under torchrun failed:\n{proc.stderr[-4000:]}")
    la = json.loads((work / "records/pretrain_la.json").read_text())
    stage = la["provenance"][-1]
    return {"ir": ir_result.history[-1]["img_per_s"], "la": la["final_img_per_s"], "floor": floor,
            "ir_peak_gib": ir_peak, "la_peak_gib": (la["cost"].get("peak_gpu_mb") or 0) / 1024 or None,
            "amp": la["history"][-1].get("amp", device == "cuda"), "workers": scale.workers,
            "steps": la["steps"], "world": stage["world_size"], "sync_bn": stage["config"]["sync_bn"],
            "la_kmeans_seconds": la["final_kmeans_seconds"], "work": work}


def kmeans(scale: Scale, device: str) -> dict:
    """One of LA's H clusterings at the paper's size: the sharded torch k-means on one device."""
    from localagg.kmeans import kmeans as torch_kmeans

    g = torch.Generator(device=device).manual_seed(0)
    bank = torch.nn.functional.normalize(torch.randn(scale.kmeans_points, 128, generator=g, device=device), dim=1)
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    labels, _ = torch_kmeans(bank, scale.kmeans_clusters, iterations=scale.kmeans_iterations, seed=0)
    if device == "cuda":
        torch.cuda.synchronize()
    return {"seconds": time.perf_counter() - t0, "nonempty": int(torch.unique(labels).numel())}


def knn_monitor(scale: Scale, device: str) -> dict:
    """The kNN monitor at N = bank size: the queries streamed through the bank, top-200."""
    from localagg.knn import knn_top1

    g = torch.Generator(device=device).manual_seed(1)
    bank = torch.nn.functional.normalize(torch.randn(scale.la_items, 128, generator=g, device=device), dim=1)
    queries = torch.nn.functional.normalize(torch.randn(scale.knn_queries, 128, generator=g, device=device), dim=1)
    labels = torch.randint(0, 1000, (scale.la_items,), generator=g, device=device)
    qlabels = torch.randint(0, 1000, (scale.knn_queries,), generator=g, device=device)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    top1 = knn_top1(queries, qlabels, bank, labels, 1000, k=200)
    if device == "cuda":
        torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    return {"seconds": time.perf_counter() - t0, "top1": top1, "peak_gib": peak}


def readout(scale: Scale, device: str, work: Path) -> dict:
    """The paper's ImageNet readout protocol (official pooling, 5 layers, 10 crops) on the LA
    model for one epoch over the JPEGs' validation split: img/s."""
    from localagg.data.augment import AugmentSpec
    from localagg.evaluation.linear import train_linear_readouts
    from localagg.evaluation.readout_config import LinearReadoutConfig
    from localagg.evaluation.transfer import load_backbone, open_readout_split
    from localagg.models.config import ModelConfig

    import yaml

    params = yaml.safe_load((work / "params.yaml").read_text())
    cfg = LinearReadoutConfig(**{**params["transfer"]["object"], "epochs": 1, "lr_drops": [], "device": device,
                                 "num_workers": scale.workers, "batch_size": scale.batch,
                                 "crop_size": scale.size, "eval_resize": round(scale.size * 256 / 224)})
    backbone = load_backbone(work / "models/la.pt", ModelConfig(arch="resnet50", stem="imagenet"))
    split = open_readout_split(work / "data/prepared/object", "val", cfg)
    t0 = time.perf_counter()
    train_linear_readouts(backbone, split, split, 10, cfg, AugmentSpec(crop_size=scale.size), seeds=[0])
    seconds = time.perf_counter() - t0
    return {"img_per_s": len(split) * 11 / seconds, "images": len(split)}  # a training pass and 10 crops


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
        print("1. ResNet-50 IR, then LA under torchrun, from JPEG files ...", file=sys.stderr)
        pre = pretraining(scale, device, Path(tmp))
        print("2. k-means at the paper's size ...", file=sys.stderr)
        km = kmeans(scale, device)
        print("3. LA objective ...", file=sys.stderr)
        la = bench_la_objective(device=device, num_items=scale.la_items, k=scale.la_k, batch=scale.batch, repeats=5,
                                num_clusters=min(30_000, scale.la_items))
        print("4. kNN monitor ...", file=sys.stderr)
        knn = knn_monitor(scale, device)
        print("5. linear readout ...", file=sys.stderr)
        ro = readout(scale, device, pre["work"])
        print("6. Detectron2 R50-C4 ...", file=sys.stderr)
        det = detection(scale, device, Path(tmp))
    name = torch.cuda.get_device_name(0) if device == "cuda" else "CPU (dry run at toy size)"

    def gib(value):
        return f"{value:.1f} GiB" if value is not None else "n/a"

    rows = [
        ("IR pretraining, ResNet-50, 1 process, JPEG files through the loader", f"{pre['ir']:,.0f} img/s",
         f"{pre['ir'] / pre['floor']:.2f} of the floor; peak {gib(pre['ir_peak_gib'])}"),
        (f"LA pretraining, ResNet-50, `localagg pretrain-la` on {pre['world']} process(es) under torchrun, "
         f"SyncBN {'on' if pre['sync_bn'] else 'off'}, {pre['steps']} steps", f"{pre['la']:,.0f} img/s",
         f"{pre['la'] / (pre['floor'] * pre['world']):.2f} of {pre['world']} x the floor; peak {gib(pre['la_peak_gib'])}"),
        ("floor: forward/backward/SGD on tensors in GPU memory, one device", f"{pre['floor']:,.0f} img/s", ""),
        (f"k-means (torch, sharded), {scale.kmeans_points:,} x 128 into {scale.kmeans_clusters:,} clusters, "
         f"{scale.kmeans_iterations} iterations, one device", f"{km['seconds']:.1f} s",
         f"x 10 clusterings = {10 * km['seconds']:.0f} s per LA epoch on one device; {km['nonempty']:,} clusters used"),
        (f"LA objective + bank update, N = {scale.la_items:,}, k = {scale.la_k}, H = 10, batch {scale.batch}",
         f"{la['la_seconds'] * 1e3:.1f} ms", f"{la['ratio']:.2f} of similarities + top-k ({la['floor_seconds'] * 1e3:.1f} ms)"),
        (f"kNN monitor, {scale.knn_queries:,} queries x {scale.la_items:,} bank rows, top-200",
         f"{knn['seconds']:.1f} s", f"peak {gib(knn['peak_gib'])}"),
        (f"linear readout, paper pooling, 5 layers, 10 crops, {ro['images']:,} JPEGs", f"{ro['img_per_s']:,.0f} img/s",
         "one training pass and the 10-crop evaluation"),
        ("Detectron2 Faster R-CNN R50-C4, 2 images / iteration, multi-scale "
         f"{min(scale.det_sizes)}-{max(scale.det_sizes)}", f"{det['iter_per_s']:.2f} it/s",
         f"12,500 iterations: {12_500 / det['iter_per_s'] / 3600:.1f} h per seed on 8 such GPUs"),
    ]
    epoch_hours = 1_281_167 / max(pre["la"], 1e-9) / 3600
    lines = [
        "# GPU smoke check",
        "",
        f"Generated by `make smoke-gpu` on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC in "
        f"{time.perf_counter() - started:.0f} s. Device: {name} x {pre['world']}; torch {torch.__version__}; "
        f"AMP {'bf16' if pre['amp'] else 'off'}; {pre['workers']} loader workers; batch {scale.batch} at {scale.size} px "
        f"from {scale.images:,} JPEGs of {scale.side} x {scale.side * 4 // 3} px.",
        "",
        "| measured | value | note |",
        "| --- | --- | --- |",
        *[f"| {a} | {b} | {c} |" for a, b, c in rows],
        "",
        f"At the LA rate above, one ImageNet epoch takes {epoch_hours:.1f} h on these {pre['world']} device(s), plus "
        f"10 clusterings ({10 * km['seconds'] / pre['world']:.0f} s with the bank sharded over them).",
        "",
    ]
    text = "\n".join(lines)
    write_text(out, text)
    write_text(out.with_suffix(".json"), json.dumps({
        "device": name, "world_size": pre["world"], "train_img_per_s_per_gpu": pre["la"] / pre["world"],
        "arch": "resnet50", "crop_size": scale.size, "kmeans_seconds": km["seconds"], "knn_seconds": knn["seconds"],
        "readout_img_per_s": ro["img_per_s"], "detection_iter_per_s": det["iter_per_s"]}, indent=1) + "\n")
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
