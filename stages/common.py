"""What every stage command shares: the --params option, user-error handling and the cost record."""

from __future__ import annotations

import contextlib
import functools
import resource
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import typer
from rich.console import Console

from localagg.errors import UserError

err_console = Console(stderr=True, highlight=False, soft_wrap=True)

ParamsOption = typer.Option(
    Path("params.yaml"), "--params", "-p", help="Params file; the command reads only its own section.",
    show_default=True,
)


def user_errors(fn: Callable) -> Callable:
    """Print a UserError as one message (no traceback) and exit with status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", markup=True)
            sys.exit(2)

    return wrapper


@contextlib.contextmanager
def measure_cost() -> Iterator[dict]:
    """Fill the yielded dict, on exit, with what the block cost (the report's cost table):

    wall_seconds   wall-clock time of the block
    peak_rss_mb    peak resident memory of this process or of its largest waited-for child
                   (ru_maxrss; covers what ran before the block too, e.g. imports)
    peak_gpu_mb    torch.cuda.max_memory_allocated on this process's device, or None
    """
    cost: dict = {}
    torch = sys.modules.get("torch")
    cuda = torch is not None and torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    yield cost
    cost["wall_seconds"] = round(time.perf_counter() - start, 2)
    kb = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    cost["peak_rss_mb"] = round(kb / 1024, 1)  # Linux reports kilobytes
    torch = sys.modules.get("torch")
    cost["peak_gpu_mb"] = (round(torch.cuda.max_memory_allocated() / 2**20, 1)
                           if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized() else None)
