"""`make bench`: every benchmark, each as a ratio against a floor measured in the same run,
written to reports/benchmarks.md with the machine and library versions.

    a. LA objective + bank update at ImageNet scale vs bare `embeddings @ bank.T` + top-k (target <= 1.3)
    b. faiss k-means per iteration vs one assignment GEMM, and vs scikit-learn's KMeans
    c. pretraining img/s vs a bare forward/backward loop of the same backbone (target >= 0.9)
    d. with a GPU: ResNet-50 LA img/s at 224 px with AMP, and (c) at that scale
    e. the file loader's training crops per core on real-size JPEGs vs a bare decode floor and
       vs the previous decode-then-crop (target >= 1.5x the previous)
    f. one training step of each network at 224 px (batch 8) vs ResNet-50 v1's, and the
       ResNet-18s at the embedded default's 40 px vs ResNet-18 v1's
"""

from __future__ import annotations

import os
import platform
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import torch

from localagg.io import write_text

from .kmeans import bench_kmeans
from .loader import bench_loader
from .networks import bench_networks
from .objective import bench_la_objective
from .pretrain import bench_pretrain_throughput

OUT = Path("reports/benchmarks.md")
PACKAGES = ("torch", "torchvision", "faiss-cpu", "faiss-gpu-cu12", "numpy", "scikit-learn", "sal-detectron2", "dvc")


def _versions() -> str:
    found = []
    for name in PACKAGES:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pass
    return ", ".join(found)


def _machine() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.machine()}, {os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}, {gpu}"


def _verdict(ratio: float, target: float, higher_is_better: bool) -> str:
    ok = ratio >= target if higher_is_better else ratio <= target
    return "meets target" if ok else "MISSES target"


def stage_times(records: Path = Path("records")) -> list[str]:
    """The wall time of every stage of the last `dvc repro`, from the `cost` of its record."""
    import json

    rows = []
    for path in sorted(records.rglob("*.json")):
        cost = json.loads(path.read_text()).get("cost") or {}
        if isinstance(cost.get("wall_seconds"), (int, float)):
            rows.append((str(path.relative_to(records).with_suffix("")), cost["wall_seconds"], cost.get("peak_rss_mb")))
    if not rows:
        return ["No records/: run `make repro` first for the pipeline's per-stage times.", ""]
    total = sum(seconds for _, seconds, _ in rows)
    return ["## Pipeline stages of the last `dvc repro`", "",
            "Wall time of each stage's own work (its record's `cost`; process start-up and DVC's bookkeeping, "
            "about 2-3 s a stage, come on top).", "",
            "| stage record | wall time | peak RSS |", "| --- | --- | --- |",
            *[f"| `{name}` | {seconds:.1f} s | {rss:,.0f} MB |" for name, seconds, rss in rows],
            f"| all stages | {total:.0f} s ({total / 60:.1f} min) | |", ""]


def main() -> None:
    rows = []
    print("a. LA objective at ImageNet scale ...", file=sys.stderr)
    a = bench_la_objective(device="cuda" if torch.cuda.is_available() else "cpu")
    rows.append(("a", "LA loss fwd+bwd + bank update (N=1,281,167, D=128, k=4096, H=10, B=128)",
                 f"{a['la_seconds'] * 1e3:.1f} ms", "dense `emb @ bank.T` + top-k", f"{a['floor_seconds'] * 1e3:.1f} ms",
                 f"{a['ratio']:.2f}", f"<= 1.3: {_verdict(a['ratio'], 1.3, False)}"))
    print("b. k-means ...", file=sys.stderr)
    b = bench_kmeans()
    rows.append(("b", f"faiss k-means, per iteration (N={b['num_points']:,}, D={b['dim']}, m={b['num_clusters']:,})",
                 f"{b['faiss_seconds_per_iter'] * 1e3:.0f} ms", "one assignment GEMM + argmin",
                 f"{b['gemm_floor_seconds'] * 1e3:.0f} ms", f"{b['ratio_faiss_vs_floor']:.2f}", "informative"))
    rows.append(("b", "scikit-learn KMeans (lloyd), per iteration, same data",
                 f"{b['sklearn_seconds_per_iter'] * 1e3:.0f} ms", "faiss k-means per iteration",
                 f"{b['faiss_seconds_per_iter'] * 1e3:.0f} ms", f"{b['ratio_sklearn_vs_faiss']:.2f}", "informative"))
    print("c. pretraining throughput ...", file=sys.stderr)
    c = bench_pretrain_throughput()
    rows.append(("c", f"LA pretraining loop, {c['arch']} {c['stem']} stem, {c['size']} px, batch {c['batch']}, {c['device']}",
                 f"{c['pretrain_img_per_s']:.0f} img/s", "bare forward/backward/SGD on in-memory tensors",
                 f"{c['bare_img_per_s']:.0f} img/s", f"{c['ratio']:.2f}", f">= 0.9: {_verdict(c['ratio'], 0.9, True)}"))
    if torch.cuda.is_available():
        print("d. ResNet-50 at 224 px on the GPU ...", file=sys.stderr)
        d = bench_pretrain_throughput(arch="resnet50", size=224, batch=128, steps=30, k=4096, num_items=128 * 30)
        rows.append(("d", "LA pretraining loop, resnet50, 224 px, batch 128, AMP bf16, channels_last",
                     f"{d['pretrain_img_per_s']:.0f} img/s", "bare forward/backward/SGD, same settings",
                     f"{d['bare_img_per_s']:.0f} img/s", f"{d['ratio']:.2f}", f">= 0.9: {_verdict(d['ratio'], 0.9, True)}"))
    print("e. file loader ...", file=sys.stderr)
    e = bench_loader()
    rows.append(("e", f"file loader training crop ({e['size']} px) per core, {e['images']} real-size JPEGs",
                 f"{e['loader']:.0f} img/s", "bare PIL decode of the whole file", f"{e['floor']:.0f} img/s",
                 f"{e['of_floor']:.2f}", "informative"))
    rows.append(("e", "the same file loader", f"{e['loader']:.0f} img/s",
                 "decode, then crop as before this release (PILToTensor + RandomResizedCrop)",
                 f"{e['previous']:.0f} img/s", f"{e['speedup']:.2f}", f">= 1.5: {_verdict(e['speedup'], 1.5, True)}"))
    print("f. networks ...", file=sys.stderr)
    for f in bench_networks():
        rows.append(("f", f"one training step, {f['arch']}, {f['size']} px, batch {f['batch']}",
                     f"{f['img_per_s']:.1f} img/s", f"{f['floor']} (v1), same step", f"{f['img_per_s'] / f['ratio']:.1f} img/s",
                     f"{f['ratio']:.2f}", "informative"))
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `make bench` on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.",
        f"Machine: {_machine()}.",
        f"Libraries: {_versions()}.",
        "",
        "Each figure is a ratio against a floor measured in the same run (medians or best of",
        "repeats; see each benchmark's module docstring in `benchmarks/`).",
        "",
        "| | measured | value | floor | floor value | ratio | target |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *[f"| {' | '.join(r)} |" for r in rows],
        "",
    ]
    if not torch.cuda.is_available():
        lines += ["No GPU on this machine: benchmark d (ResNet-50 at 224 px with AMP) did not run "
                  "(`make smoke-gpu` measures the paper's scale on a CUDA machine).", ""]
    lines += stage_times()
    write_text(OUT, "\n".join(lines))
    print("\n".join(lines))


main()
