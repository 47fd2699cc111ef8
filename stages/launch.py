"""How a stage command gets its processes: here, on this machine, or under torchrun.

`relaunch_under_torchrun(command, params, nproc)` re-runs the stage command as `torchrun
--standalone --nproc_per_node N -m stages ...` and exits with its status; the library's
training and evaluation only read torchrun's environment (runtime.distributed).
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
    """True inside a process that torchrun started (it sets LOCAL_RANK)."""
    return "LOCAL_RANK" in os.environ


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
