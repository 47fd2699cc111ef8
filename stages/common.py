"""What every stage command shares: the --params option, user-error handling, dvclive curves and
the cost record."""

from __future__ import annotations

import contextlib
import functools
import logging
import resource
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import typer
from rich.console import Console
from rich.markup import escape

from localagg.errors import UserError
from localagg.io import DiskFull, is_full, write_json
from localagg.process import terminate_on_sigterm

from .guard import stage_lock, watch_owner
from .paths import record_path

err_console = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)

ParamsOption = typer.Option(Path("params.yaml"), "--params", "-p", help="the params file", show_default=True)


class _Format(logging.Formatter):
    """'12:03:41 message' ('12:03:41 warning: message' from WARNING up)."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = self.formatTime(record, "%H:%M:%S")
        level = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
        return f"{stamp} {level}{record.getMessage()}"


def configure_logging(level: int = logging.INFO) -> None:
    """Progress and warnings of localagg (and Detectron2) to stderr, one line each; idempotent."""
    root = logging.getLogger()
    if any(getattr(h, "_localagg", False) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Format())
    handler._localagg = True
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    for name in ("localagg", "stages", "detectron2"):
        logging.getLogger(name).setLevel(level)


def user_errors(fn: Callable) -> Callable:
    """Print a UserError as one message (no traceback) and exit with status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", markup=True)
            sys.exit(2)
        except OSError as exc:  # a full disk anywhere else (JSON, figures, manifests): one message too
            if not is_full(exc):
                raise
            message = str(DiskFull(exc.filename or "a file", exc.strerror or "no space left"))
            err_console.print(f"[bold red]error:[/] {escape(message)}", markup=True)
            sys.exit(2)

    return wrapper


@contextlib.contextmanager
def measure_cost() -> Iterator[dict]:
    """Fill the yielded dict, on exit, with what the block cost (the report's cost table):

    wall_seconds   wall-clock time of the block
    peak_rss_mb    peak resident memory of this process or of its largest waited-for child
                   (ru_maxrss; covers what ran before the block too, e.g. imports)
    peak_gpu_mb    torch.cuda.max_memory_allocated on this process's device, or None when this
                   process did not use CUDA (no GPU, or the work ran in child processes)
    """
    cost: dict = {}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.reset_peak_memory_stats()  # never the first CUDA call: that would create a context
    start = time.perf_counter()
    yield cost
    cost["wall_seconds"] = round(time.perf_counter() - start, 2)
    kb = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    cost["peak_rss_mb"] = round(kb / 1024, 1)  # Linux reports kilobytes
    torch = sys.modules.get("torch")
    cost["peak_gpu_mb"] = (round(torch.cuda.max_memory_allocated() / 2**20, 1)
                           if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized() else None)


class DvcLiveLogger:
    """Curves to dvclive (rank 0 only): plots under <live_dir>/plots/metrics, one TSV per key.

    `log_epoch(step, metrics)` (pretraining, readout: per epoch) and `log_step` (detection:
    per logging period) record `metrics` at x = step_offset + step, the TSVs' step column
    (what `dvc plots` draws as x). `step_offset` lets a training that continues another one
    continue its curves: LA logs at IR's epochs + its own epoch. The dvclive run opens at the
    first record, so a logger can be pickled into worker processes before it is used.
    """

    def __init__(self, live_dir: Path, step_offset: int = 0):
        self.live_dir = Path(live_dir)
        self.step_offset = step_offset
        self.live = None

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        if self.live is None:
            from dvclive import Live

            self.live = Live(dir=str(self.live_dir), resume=False, save_dvc_exp=False, dvcyaml=None, report=None)
        self.live.step = self.step_offset + epoch
        for key, value in metrics.items():
            self.live.log_metric(key, float(value), plot=True)
        self.live.next_step()

    log_step = log_epoch

    def close(self) -> None:
        if self.live is not None:
            self.live.end()


def run_environment() -> dict:
    """What ran, beyond params: the code (git commit, and whether the tree had uncommitted
    changes), the libraries, the CPU kernels and thread count (float results depend on both),
    the device. Results are byte-identical across runs only where all of it is the same."""
    import importlib.metadata as md
    import platform
    import subprocess

    import torch

    def version(name: str) -> str | None:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {
        "git_commit": commit, "git_dirty": bool(dirty) if dirty is not None else None,
        "python": platform.python_version(), "torch": torch.__version__,
        "numpy": version("numpy"), "faiss": version("faiss-cpu") or version("faiss-gpu-cu12"),
        "detectron2": getattr(sys.modules.get("detectron2"), "__version__", None) or version("detectron2"),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(), "machine": platform.machine(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available() else [],
    }


def write_results(metrics: Path, record: dict, headline: dict) -> list[Path]:
    """Write the stage's record (everything: numbers, protocol, cost, the run environment) to
    records/..., then its headline numbers to metrics/... (`paths.record_path`), rounded to the
    precision they carry (`rounded`; the record keeps every digit); the metrics file last, so a
    stage that stops in between leaves no metrics file newer than its record. Returns the two
    paths, record first."""
    record["environment"] = run_environment()
    write_json(record_path(metrics), record)
    write_json(metrics, rounded(headline))
    return [record_path(metrics), Path(metrics)]


FINE_METRICS = ("loss", "nmi")  # keys holding one of these have 4 decimals in metrics/; the rest are percent


def decimals(key: str) -> int:
    """Decimals of a headline number in a metrics file (what `dvc metrics show` lists): 4 for
    losses and NMI (key contains loss or nmi), 2 for the rest (accuracies and APs, in percent)."""
    return 4 if any(word in key.lower() for word in FINE_METRICS) else 2


def rounded(headline: dict) -> dict:
    """`headline` with every float rounded to `decimals(key)` (nested dicts too; others kept)."""
    out = {}
    for key, value in headline.items():
        if isinstance(value, dict):
            out[key] = rounded(value)
        elif isinstance(value, float):
            out[key] = round(value, decimals(key))
        else:
            out[key] = value
    return out


def wrote(*paths: str | Path) -> str:
    """'wrote a', 'wrote a and b', 'wrote a, b and c': the end of a stage's last line."""
    names = [str(p) for p in paths]
    return "wrote " + (names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}")


@contextlib.contextmanager
def stage_run(name: str, outputs: str) -> Iterator[None]:
    """The frame of every stage command: SIGTERM stops it cleanly, it stops when the `dvc` that
    runs it is gone, and it is the only writer of its outputs (guard.py)."""
    terminate_on_sigterm()
    watch_owner()
    with stage_lock(name, outputs):
        yield
