"""How a stage command gets its processes: here, under torchrun on this machine, or as a
SLURM job (`launcher` section of params).

`dispatch(stage, argv, params, nproc, key)` is called by each heavy stage once its params and
inputs are checked: inside a launched process (a torchrun worker, a SLURM task) it returns
and the stage runs; with `launcher.kind: slurm` for this stage it submits the job and exits
with its status (slurm.py); with nproc > 1 it re-runs the command under `torchrun --standalone
--nproc_per_node N` and exits with its status; else it returns. The library's training and
evaluation only read torch.distributed's environment (runtime.distributed), which torchrun
and the SLURM tasks (slurm_task.py) both set.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Iterator

from localagg.errors import UserError


def launched() -> bool:
    """True inside a process that torchrun or a SLURM task started (they set LOCAL_RANK)."""
    return "LOCAL_RANK" in os.environ


def in_slurm_job() -> bool:
    from .slurm_task import JOB_ENV

    return bool(os.environ.get(JOB_ENV))


def dispatch(stage: str, argv: list[str], params: Path, nproc: int, key: str, per_node_workers: bool = False,
             cell: str | None = None) -> None:
    """Run the stage here (return), or elsewhere and exit with its status (module docstring).

    `argv`: the stage command and its options, without --params. `key`: the params key that
    sets `nproc` (named in messages). `cell`: the matrix cell (job name), default `stage`. `per_node_workers`: the stage starts its own workers on
    each machine (detection, Detectron2's launcher), so a SLURM job gets one task per node.
    """
    if launched() or in_slurm_job():
        return
    from .params import load_section

    launcher = load_section(params, "launcher")
    if launcher.kind == "slurm" and stage in launcher.stages:
        from .slurm import run_as_job

        sys.exit(run_as_job(cell or stage, [*argv, "--params", str(params)], nproc, per_node_workers, launcher.slurm,
                            key))
    if nproc > 1 and not per_node_workers:
        relaunch_under_torchrun(argv, params, nproc)


def relaunch_under_torchrun(command: str | list[str], params: Path, nproc: int) -> None:
    """Re-run this stage command (its name, or its name and options) as `torchrun --nproc_per_node
    N -m stages ...` and exit with its status. torchrun gets SIGTERM if this process dies (it
    then stops its workers), and is terminated if this process is asked to stop."""
    from localagg.process import die_with_parent

    args = [command] if isinstance(command, str) else list(command)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "stages", *args, "--params", str(params)]
    child = subprocess.Popen(cmd, preexec_fn=die_with_parent)
    try:
        sys.exit(child.wait())
    finally:
        if child.poll() is None:
            child.terminate()
            child.wait()


@contextlib.contextmanager
def exit_at_once_if_a_rank_fails(dist) -> Iterator[None]:
    """Under torch.distributed, an error other than a UserError (a collective that timed out, a
    peer that died) is printed and the process exits at once (os._exit(1)): tearing down a
    process group with a failed collective can deadlock (torch 2.3's gloo joins its worker
    threads while they wait for the GIL), which would leave the rank running after the job
    failed. Cleanups in `finally` blocks below have run by then."""
    try:
        yield
    except (UserError, KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:
        if not dist.enabled:
            raise
        traceback.print_exc()
        print(f"error: rank {dist.rank} of {dist.world_size} stopped: {type(exc).__name__}: {str(exc)[:300]}. "
              "When a collective timed out, another rank was slower than collective_timeout_s or died; its log "
              "says which.", file=sys.stderr, flush=True)
        os._exit(1)
