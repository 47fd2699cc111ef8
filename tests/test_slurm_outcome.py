"""What the submitting stage says once its SLURM job has ended (stages.slurm._outcome), from
SLURM's last answer and task 0's status file. test_slurm.py runs the real cluster; these are
the ends it cannot bring about on demand."""

from __future__ import annotations

import pytest

from stages import slurm
from stages.launcher_config import SlurmParams
from stages.slurm_task import write_status


def _final(state: str, restarts: int, reason: str = "NonZeroExitCode") -> dict:
    return {"state": state, "restarts": restarts, "exit_code": "1:0", "reason": reason}


def test_a_requeue_whose_next_attempt_never_ran_says_so_and_how_to_continue(tmp_path, capsys):
    # slurmd refused the requeued attempt ("Job credential revoked"): task 0's last status is
    # the one of attempt 0 that asked for the requeue
    write_status(tmp_path / slurm.STATUS.format(job="7"), 140, True, 0)
    assert slurm._outcome("pretrain_ia", "7", _final("FAILED", 1), tmp_path, SlurmParams()) == 1
    err = capsys.readouterr().err
    assert "SLURM requeued job 7 (1 requeue(s)), but the attempt after it ended FAILED (reason NonZeroExitCode)" in err
    assert "Run `dvc repro` again to continue from it" in err and "Traceback" not in err


@pytest.mark.parametrize("status, fragment", [
    ((140, False, 1), "stopped (FAILED, exit 140) after 1 requeue(s)"),  # out of requeues on attempt 1
    ((1, False, 1), "ended FAILED (exit code 1:0)"),  # the resumed attempt itself failed
    ((140, True, 1), "stopped (FAILED, exit 140) after 1 requeue(s)"),  # asked again; SLURM did not count it
], ids=["out-of-requeues", "resumed-attempt-failed", "requeue-not-counted"])
def test_an_attempt_that_wrote_its_end_is_reported_by_it(tmp_path, capsys, status, fragment):
    write_status(tmp_path / slurm.STATUS.format(job="7"), *status)
    assert slurm._outcome("pretrain_ia", "7", _final("FAILED", 1), tmp_path, SlurmParams()) == 1
    err = capsys.readouterr().err
    assert fragment in err and "SLURM requeued job" not in err
