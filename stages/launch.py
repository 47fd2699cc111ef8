"""How a stage command gets its processes: here, on this machine, or under torchrun.

`relaunch_under_torchrun(command, params, nproc)` re-runs the stage command as `torchrun
--standalone --nproc_per_node N -m stages ...` and exits with its status; the library's
training and evaluation only read torchrun's environment (runtime.distributed).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def launched() -> bool:
    """True inside a process that torchrun started (it sets LOCAL_RANK)."""
    return "LOCAL_RANK" in os.environ


def relaunch_under_torchrun(command: str, params: Path, nproc: int) -> None:
    """Re-run this stage command as `torchrun --nproc_per_node N -m stages ...` and exit with its
    status. torchrun gets SIGTERM if this process dies (it then stops its workers), and is
    terminated if this process is asked to stop."""
    from localagg.process import die_with_parent

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "stages", command, "--params", str(params)]
    child = subprocess.Popen(cmd, preexec_fn=die_with_parent)
    try:
        sys.exit(child.wait())
    finally:
        if child.poll() is None:
            child.terminate()
            child.wait()
