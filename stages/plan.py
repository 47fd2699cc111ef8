"""`localagg plan`: what every stage of the current params will need, before anything runs.

For each stage (and each cell of transfer and detection): images processed, peak memory per
GPU, peak host memory of the node, disk written and an estimated time, from the formulas of
localagg/costs.py; then one line for each thing that would not fit on the machine described
(by default this one). Time comes from the throughput last measured for the same kind of device
(a previous run's record, then `make smoke-gpu`'s reports/gpu-smoke.json), else from the stated
assumption of costs.py; the `basis` column says which.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from localagg.costs import ASSUMED_RATES, GIB, Cost, detection_cost, flops_ratio, pretrain_cost, readout_cost

from .params import validate_all
from .paths import DATASETS, MODELS, PIXELS, TRANSFER_MODELS

NUM_CLASSES = {"imagenet": 1000, "places205": 205}  # the released sets; the embedded ones have 10
SMOKE_RECORD = Path("reports/gpu-smoke.json")


@dataclass
class Machine:
    gpus: int
    gpu_bytes: int
    host_bytes: int
    disk_bytes: int
    cores: int

    @classmethod
    def here(cls) -> "Machine":
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        gpu = torch.cuda.get_device_properties(0).total_memory if gpus else 0
        host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return cls(gpus, gpu, host, shutil.disk_usage(".").free, os.cpu_count() or 1)

    def describe(self) -> str:
        gpus = f"{self.gpus} GPU(s) of {self.gpu_bytes / GIB:,.0f} GiB" if self.gpus else "no GPU"
        return (f"{gpus}, {self.host_bytes / GIB:,.0f} GiB host memory, {self.disk_bytes / GIB:,.0f} GiB free disk, "
                f"{self.cores} cores")


def _newest_rate(paths, device: str, rate_of) -> tuple[float, str] | None:
    """(rate, basis) from the newest record among `paths` that ran on `device` and for which
    `rate_of(record)` gives a rate (None: not usable); None if there is none."""
    found = []
    for path in paths:
        try:
            r = json.loads(path.read_text())
            ran_on = "cuda" if (r.get("cost") or {}).get("peak_gpu_mb") else "cpu"
            rate = rate_of(r) if ran_on == device else None
            if rate:
                found.append((path.stat().st_mtime, rate, f"measured: {path}"))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return tuple(max(found)[1:]) if found else None


def _measured_rate(device: str) -> tuple[float, str] | None:
    """Training img/s per device of ResNet-50 at 224 px, scaled by FLOPs from the newest
    pretraining record that ran on `device`, else from the GPU smoke record."""
    from localagg.models.config import ModelConfig

    def rate_of(r: dict) -> float | None:
        stage = r["provenance"][-1]
        if not r.get("final_img_per_s"):
            return None
        cfg = ModelConfig(arch=stage["arch"], stem=stage["stem"], embedding_dim=stage["embedding_dim"])
        per_device = r["final_img_per_s"] / max(1, stage.get("world_size", 1))
        return per_device * flops_ratio(cfg, stage["augment"]["crop_size"])

    found = _newest_rate(Path("records").glob("pretrain_*.json"), device, rate_of)
    if found:
        return found
    if device == "cuda" and SMOKE_RECORD.is_file():
        try:
            smoke = json.loads(SMOKE_RECORD.read_text())
            return float(smoke["train_img_per_s_per_gpu"]), f"measured: {SMOKE_RECORD} ({smoke.get('device', '?')})"
        except (ValueError, KeyError, TypeError):
            pass
    return None


def _detection_rate(device: str, det) -> tuple[float, str] | tuple[()]:
    """Images/s per device of the newest detection record on `device` whose input sizes are
    these params' (detection's cost grows with the image side); () if none."""
    def rate_of(r: dict) -> float | None:
        p, cost = r["protocol"], r.get("cost") or {}
        if p["max_size_train"] != det.max_size_train or not cost.get("wall_seconds"):
            return None
        return p["max_iter"] * p["ims_per_batch"] / (cost["wall_seconds"] * max(1, p["num_gpus"]))

    return _newest_rate(Path("records/detection").glob("*.json"), device, rate_of) or ()


def _device(setting: str, machine: Machine) -> str:
    return "cuda" if setting == "cuda" or (setting == "auto" and machine.gpus) else "cpu"


def plan(params: Path, machine: Machine) -> tuple[list[Cost], list[str]]:
    """The costs of every stage, and what would not fit on `machine`."""
    from localagg.evaluation.sizes import cache_bytes, readout_dims

    from .prepare import expected_sizes

    s = validate_all(params, data_sizes=None)
    sizes = expected_sizes(s["prepare"])
    names = {"object": s["prepare"].object.source, "transfer": s["prepare"].transfer.source}
    classes = {role: NUM_CLASSES.get(names[role], 10) for role in DATASETS}
    model_cfg, crop = s["model"], s["augment"].crop_size
    n, val = sizes["object"] or (0, 0)
    costs = [Cost("prepare", items=sum(a + b for a, b in filter(None, sizes.values())),
                  host_bytes=sum(a + b for a, b in filter(None, sizes.values())) * 400,
                  disk_bytes=sum(a + b for a, b in filter(None, sizes.values())) * 80,
                  seconds=sum(a + b for a, b in filter(None, sizes.values())) / 20000.0,
                  basis="assumed: 20,000 files/s listed and stat'ed")]

    def rate(device: str, kind: str) -> tuple[float, str]:
        found = _measured_rate(device)
        if found is None:
            return ASSUMED_RATES[device][kind], f"assumed: {ASSUMED_RATES[device][kind]:,.0f} img/s per device (costs.py)"
        return found[0] * (3 if kind == "eval" else 1), found[1]

    for stage in ("pretrain_ia", "pretrain_la", "supervised"):
        cfg = s[stage]
        device = _device(cfg.device, machine)
        r, basis = rate(device, "train")
        costs.append(pretrain_cost(stage, cfg, model_cfg, crop, n, classes["object"], device, machine.gpus, r, basis,
                                   machine.cores))
    costs.append(Cost("random_init", disk_bytes=costs[-1].disk_bytes // 10, basis="no data"))
    imported = s["external"].names()  # evaluated like LA: their import is seconds
    costs += [Cost(f"import {name}", basis="one file read") for name in imported]
    t = s["transfer"]
    for model in (*TRANSFER_MODELS, *imported):
        for role in DATASETS:
            readout = getattr(t, role)
            train, vals = sizes[role] or (0, 0)
            cfg = None if model == PIXELS else model_cfg
            dims = readout_dims(cfg, readout)
            device = _device(readout.device, machine)
            r, basis = rate(device, "eval")
            costs.append(readout_cost(f"transfer {model}-{role}", readout, cfg, dims, train, vals, classes[role],
                                      len(t.seeds), cache_bytes(dims, train, vals, readout), device, machine.gpus,
                                      r, basis, machine.cores))
    det = s["detection"]
    device = _device(det.device, machine)
    measured = _detection_rate(device, det)
    for model in (*MODELS, *imported):
        for seed in det.seeds:
            costs.append(detection_cost(f"detection {model}-seed{seed}", det, device, machine.gpus, *measured))
    costs.append(Cost("report", basis="no data"))
    return costs, _problems(costs, machine)


def _problems(costs: list[Cost], machine: Machine) -> list[str]:
    out = []
    for c in costs:
        if c.gpu_bytes and not machine.gpus:
            out.append(f"{c.stage}: runs on CUDA, and the machine has no GPU")
        elif c.gpu_bytes > machine.gpu_bytes > 0:
            out.append(f"{c.stage}: needs {c.gpu_bytes / GIB:,.1f} GiB per GPU, more than the "
                       f"{machine.gpu_bytes / GIB:,.0f} GiB there; lower its batch_size")
        if c.host_bytes > machine.host_bytes:
            out.append(f"{c.stage}: needs {c.host_bytes / GIB:,.1f} GiB of host memory, more than the "
                       f"{machine.host_bytes / GIB:,.0f} GiB there")
        out += [f"{c.stage}: {note}" for note in c.notes]
    disk = sum(c.disk_bytes for c in costs)
    if disk > machine.disk_bytes:
        out.append(f"all stages write {disk / GIB:,.1f} GiB, more than the {machine.disk_bytes / GIB:,.0f} GiB free")
    return out


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:,.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:,.0f} min"
    return f"{seconds / 3600:,.1f} h"


def render(costs: list[Cost], problems: list[str], machine: Machine) -> str:
    """The plan as a Markdown table (what `localagg plan` prints and the README shows)."""
    lines = [f"Plan for {machine.describe()}:", "",
             "| stage | images | GPU memory (each) | host memory | disk | time | GPU-hours | time from |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for c in costs:
        lines.append(f"| {c.stage} | {c.items:,} | {c.gpu_bytes / GIB:,.1f} GiB | {c.host_bytes / GIB:,.1f} GiB | "
                     f"{c.disk_bytes / GIB:,.2f} GiB | {_duration(c.seconds)} | "
                     f"{f'{c.gpu_hours:,.1f}' if c.gpus else '-'} | {c.basis} |")
    gpu_hours = sum(c.gpu_hours for c in costs)
    lines += ["", f"Total: {_duration(sum(c.seconds for c in costs))} one stage after another"
              + (f", {gpu_hours:,.0f} GPU-hours (what a SLURM allocation is billed)." if gpu_hours else ".")]
    lines += ["", "Nothing here would not fit." if not problems else "Would not fit or would be slow:"]
    lines += [f"- {p}" for p in problems]
    return "\n".join(lines) + "\n"


