"""What a stage will cost before it runs: bytes from shapes, time from throughputs.

Bytes come from the code's own shapes, probed on PyTorch's meta device (no compute, no
memory): the tensors autograd saves for one image (an upper bound on training activations:
a tensor saved by two ops counts twice), the largest feature map of an evaluation forward,
parameter counts, the pooled readout features (evaluation/sizes.py), and the banks, labels
and similarity blocks the objectives and k-means allocate (formulas below).

Time is work / throughput. Work is counted in forward FLOPs (torch's FlopCounterMode on the
meta device) so that one measured throughput carries over to another crop or architecture:

    seconds = images * flops(arch, crop) / (rate_ref * flops(resnet50, 224) * gpus)

with rate_ref the images/s per GPU of ResNet-50 at 224 px, from (in this order) a previous
run's record on the same kind of device, `make smoke-gpu`'s record (reports/gpu-smoke.json),
else the stated assumption ASSUMED_RATES (every row says which). A CPU-decoded loader caps the
rate at LOADER_IMG_S_PER_CORE x cores.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch

GIB = 2**30

# Stated assumptions, used only where nothing was measured (the plan says so on each row).
# ResNet-50 at 224 px, bfloat16, channels_last, per GPU: NVIDIA DeepLearningExamples' published
# A100 mixed-precision training throughput (~2,500 img/s); evaluation forwards ~3x a training step.
ASSUMED_RATES = {"cuda": {"train": 2500.0, "eval": 7500.0}, "cpu": {"train": 25.0, "eval": 75.0}}
LOADER_IMG_S_PER_CORE = 600.0  # the CPU loader on real-size JPEGs at 224 px (`make bench`, e: 598-634 here)
PROCESS_BYTES = {"cuda": 3 * GIB, "cpu": GIB}  # a training process: torch, CUDA context, allocator slack
WORKER_BYTES = GIB // 2  # a loader worker: its interpreter, decode buffers
MANIFEST_ROW_BYTES = 200  # a (path, label) row held in Python by every process and worker
GPU_SLACK = 1.15  # the caching allocator's fragmentation over the live bytes
# Detectron2's model zoo, faster_rcnn_R_50_C4_1x: 4.8 GB per GPU and 0.551 s/iter at 2 images
# per V100 (16 on 8); the plan scales iterations by images per GPU.
DETECTION_GPU_BYTES = int(4.8 * 1e9)
DETECTION_IMG_S_PER_GPU = 2 / 0.551


@dataclass
class Cost:
    """One stage (or one cell of a foreach stage) on `gpus` devices."""

    stage: str
    items: int = 0             # images processed, all epochs
    gpu_bytes: int = 0         # peak on each GPU (0: runs on the CPU)
    host_bytes: int = 0        # peak on the node, all processes together
    disk_bytes: int = 0        # written (checkpoints, models, manifests)
    seconds: float = 0.0
    basis: str = ""            # where `seconds` comes from
    notes: list[str] = field(default_factory=list)
    gpus: int = 0              # GPUs it holds for `seconds` (0: a CPU stage)

    @property
    def gpu_hours(self) -> float:
        """What a cluster bills: the GPUs held times the time (a SLURM job holds them all throughout)."""
        return self.gpus * self.seconds / 3600


@functools.lru_cache(maxsize=None)
def _probe(arch: str, stem: str, dim: int, crop: int, dtype: torch.dtype) -> dict[str, int]:
    """Per image: bytes autograd saves in a training forward, the largest activation of an
    evaluation forward, forward FLOPs; and the parameter count."""
    from torch.utils.flop_counter import FlopCounterMode

    from .models.backbone import build_model

    with torch.device("meta"):
        model = build_model(arch, stem, dim).to(dtype)
        params = {id(p) for p in model.parameters()}
        saved = [0]

        def pack(t):
            if id(t) not in params:
                saved[0] += t.numel() * t.element_size()
            return t

        # 2 images: batch norm on a 1 x 1 map (AlexNet's and VGG16's fc6, fc7) needs more than one value
        x = torch.empty(2, 3, crop, crop, dtype=dtype)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(x)
        largest = [0]

        def hook(_m, _i, out):
            if isinstance(out, torch.Tensor):
                largest[0] = max(largest[0], out.numel() * out.element_size())

        handles = [m.register_forward_hook(hook) for m in model.modules()]
        model.eval()
        with torch.no_grad(), FlopCounterMode(display=False) as flops:
            model(x)
        for h in handles:
            h.remove()
    return {"saved": saved[0] // 2, "largest": largest[0] // 2, "flops": flops.get_total_flops() // 2,
            "params": sum(p.numel() for p in model.parameters())}


def probe(model_cfg, crop: int, amp: bool) -> dict[str, int]:
    return _probe(model_cfg.arch, model_cfg.stem, model_cfg.embedding_dim, crop,
                  torch.bfloat16 if amp else torch.float32)


def flops_ratio(model_cfg, crop: int) -> float:
    """Forward FLOPs of this network and crop over ResNet-50's at 224 px."""
    from .models.config import ModelConfig

    ref = ModelConfig(arch="resnet50", stem="imagenet", embedding_dim=128)
    return probe(model_cfg, crop, False)["flops"] / probe(ref, 224, False)["flops"]


def pretrain_cost(stage: str, cfg, model_cfg, crop: int, n: int, num_classes: int, device: str, gpus: int,
                  rate: float, basis: str, cores: int) -> Cost:
    """A pretraining stage (pretrain_ia, pretrain_la, supervised) over `n` training images.

    GPU, per rank (b = batch_size / gpus, D = embedding_dim, P = parameters):
        activations  b * saved(1 image)                          (meta-device probe)
        weights      P * 4 * 3                                    (weights, gradients, momentum)
        bank         N * D * 4                                    (IR, LA: replicated on every rank)
        LA           H * N * 8 (labels) + 2 * b * N * 4 (dense similarities and their top-k)
                     + N/gpus * D * 4 + m * D * 4 + 8192 * m * 4  (k-means shard, centroids, block)
        IR           b * K * D * 4                                (the noise rows gathered)
    Host, node: processes + workers, manifests in each, rank 0's checkpoint staging (bank,
    labels, weights, momentum on the host). Disk: the checkpoint twice (atomic rewrite) and the
    exported model.
    """
    amp = cfg.amp == "on" or (cfg.amp == "auto" and device == "cuda" and not cfg.float64)
    p = probe(model_cfg, crop, amp)
    world = gpus if device == "cuda" else max(1, cfg.num_processes)
    b = max(1, cfg.batch_size // world)
    D, P = model_cfg.embedding_dim, p["params"]
    weights = P * 4 * 3
    bank = n * D * 4 if stage != "supervised" else 0
    labels = gpu_extra = 0
    notes = []
    if stage == "pretrain_la":
        labels = cfg.num_kmeans * n * 8
        m = cfg.num_clusters
        gpu_extra = 2 * b * n * 4 + (n // world) * D * 4 + m * D * 4 + 8192 * m * 4
    elif stage == "pretrain_ia" and cfg.num_negatives:
        gpu_extra = b * cfg.num_negatives * D * 4
    elif stage == "supervised":
        weights += model_cfg.embedding_dim * 0 + num_classes * 2048 * 4 * 3
    gpu = int((b * p["saved"] + weights + bank + labels + gpu_extra) * GPU_SLACK) if device == "cuda" else 0
    procs = world
    workers = procs * cfg.num_workers
    host = (procs * PROCESS_BYTES[device] + workers * WORKER_BYTES + (procs + workers) * n * MANIFEST_ROW_BYTES
            + bank + labels + P * 4 * 2)
    if device == "cpu":
        host += procs * (b * p["saved"] + weights) + bank * (procs - 1)
    disk = 2 * (bank + labels + P * 4 * 2) + P * 4
    items = n * cfg.epochs
    loader_cap = LOADER_IMG_S_PER_CORE * cores
    decode_on_gpu = device == "cuda" and cfg.jpeg_decode in ("auto", "device")
    effective = rate * world / flops_ratio(model_cfg, crop)
    if not decode_on_gpu and loader_cap < effective:
        notes.append(f"the CPU loader ({cores} cores x {LOADER_IMG_S_PER_CORE:,.0f} img/s) is slower than the "
                     f"GPUs ({effective:,.0f} img/s): set jpeg_decode: device")
        effective = loader_cap
    seconds = items / effective
    if stage == "pretrain_la":  # H clusterings a epoch: iterations x one (N x m x D) assignment, on the ranks
        seconds += cfg.epochs * cfg.num_kmeans * cfg.kmeans_iterations * 2.0 * n * cfg.num_clusters * D / (
            world * _matmul_flops(device))
    seconds += cfg.epochs * n / (world * rate * 3 / flops_ratio(model_cfg, crop))  # the kNN monitor's embed
    return Cost(stage, items, gpu, int(host), int(disk), seconds, basis, notes, world if device == "cuda" else 0)


def _matmul_flops(device: str) -> float:
    """Sustained fp32 matmul FLOP/s assumed for k-means assignment: 20 TFLOP/s on a GPU
    (TF32 off), 50 GFLOP/s per CPU process."""
    return 20e12 if device == "cuda" else 50e9


def readout_cost(cell: str, readout, model_cfg, dims: dict[str, int], train: int, val: int, num_classes: int,
                 seeds: int, cache: int, device: str, gpus: int, rate: float, basis: str, cores: int) -> Cost:
    """A transfer cell: the readout's forwards (once with cache_features, else every epoch, per
    seed), the validation crops, and the kNN's two embedding passes, at the slower of the
    devices and the CPU loader. GPU: the largest
    activation of the batch twice over, the weights, the heads with gradients and momentum."""
    amp = readout.amp != "off" and device == "cuda" and not readout.float64
    crop = readout.crop_size
    world = gpus if device == "cuda" else 1
    b = max(1, readout.batch_size // world)
    heads = sum(dims.values()) * num_classes * 4 * 3
    if model_cfg is None:
        gpu = int((2 * b * 3 * crop * crop * 4 + heads) * GPU_SLACK)
        ratio = 0.0
    else:
        p = probe(model_cfg, crop, amp)
        gpu = int((2 * b * p["largest"] + p["params"] * 4 + heads) * GPU_SLACK)
        ratio = flops_ratio(model_cfg, crop)
    crops = 10 if readout.ten_crop else 1
    passes = 1 if readout.cache_features else readout.epochs * seeds
    items = train * passes + val * crops * (1 if readout.cache_features else seeds) + train + val
    loader = LOADER_IMG_S_PER_CORE * cores  # the readout decodes on the CPU
    seconds = items / min(rate * world / ratio, loader) if ratio else items / loader
    if not ratio or loader < rate * world / ratio:
        basis = f"CPU loader: {cores} cores x {LOADER_IMG_S_PER_CORE:,.0f} img/s (costs.py)"
    host = cache + world * PROCESS_BYTES[device] + (world + world * readout.num_workers) * (train + val) * \
        MANIFEST_ROW_BYTES
    return Cost(cell, items, gpu if device == "cuda" else 0, int(host), 0, seconds, basis,
                gpus=world if device == "cuda" else 0)


def detection_cost(cell: str, det, device: str, gpus: int, rate: float | None = None, basis: str = "") -> Cost:
    """A detection cell: images / (img/s per device x devices), the rate measured by a previous
    cell's record on the same kind of device, else Detectron2's published R50-C4 figures
    (DETECTION_*); GPU memory from those figures, scaled by images per GPU."""
    world = max(1, det.num_gpus) if device == "cuda" else 1
    items = det.max_iter * det.ims_per_batch
    per_gpu = det.ims_per_batch / world
    gpu = int(DETECTION_GPU_BYTES * max(1.0, per_gpu / 2)) if device == "cuda" else 0
    if rate is None:
        rate = DETECTION_IMG_S_PER_GPU if device == "cuda" else 0.5
        basis = ("assumed: Detectron2 model zoo, R50-C4 on V100" if device == "cuda"
                 else "assumed: 0.5 img/s on a CPU at the paper's sizes")
    return Cost(cell, items, gpu, world * PROCESS_BYTES[device] + 2 * GIB, 2 * 200 * 2**20, items / (rate * world),
                basis, gpus=world if device == "cuda" else 0)
