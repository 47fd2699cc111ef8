"""What every task of a stage's SLURM job runs (submitit pickles a `StageTask` and calls it).

Each task runs the stage command (`python -m stages <command> ...`) as a child process in
the submitting working tree, with the rank variables torch.distributed reads, derived from
SLURM's (submitit.JobEnvironment):

    per_process (training, readout):  RANK = SLURM_PROCID, WORLD_SIZE = SLURM_NTASKS,
                                      LOCAL_RANK = SLURM_LOCALID
    per_node (detection):             NODE_RANK = SLURM_NODEID, NUM_NODES = SLURM_NNODES; the
                                      stage starts its GPU workers on each node
    both:                             MASTER_ADDR = the first host of SLURM_JOB_NODELIST,
                                      MASTER_PORT = 20000 + job id mod 20000

The child has its own process group; SIGUSR2 (the time-limit warning), SIGTERM (preemption,
scancel) and SIGINT reach it once, through this task. The stage then stops at its next step
with a checkpoint and exits 128 + signal (localagg.runtime.signals). After a SIGUSR2, task 0
requeues the job (`scontrol requeue`) while it has requeues left (SLURM_RESTART_COUNT <
max_requeues); the requeued job resumes from that checkpoint. After a SIGTERM it does not:
SLURM requeues a preempted job itself, and a cancelled one stays cancelled.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from localagg.runtime.signals import STOP_SIGNALS, stopped_by

JOB_ENV = "LOCALAGG_SLURM_JOB"  # set in the stage's environment inside a job: it runs here, it submits nothing


def master_port(job_id: str) -> int:
    digits = "".join(c for c in job_id if c.isdigit()) or "0"
    return 20000 + int(digits) % 20000


@dataclass
class StageTask:
    argv: list[str]                  # the stage command's arguments (after `python -m stages`)
    cwd: str                         # the working tree the stage was submitted from
    layout: str = "per_process"      # per_process | per_node
    max_requeues: int = 3
    env: dict[str, str] = field(default_factory=dict)  # what the stage needs from its submitter
    folder: str = "."                # submitit's folder of this job: task 0 writes <job>_status.json there

    def rank_env(self, job) -> dict[str, str]:
        env = {JOB_ENV: str(job.job_id), "MASTER_ADDR": job.hostnames[0], "MASTER_PORT": str(master_port(job.job_id))}
        if self.layout == "per_node":
            env.update(NODE_RANK=str(job.node), NUM_NODES=str(job.num_nodes))
        elif job.num_tasks > 1:
            env.update(RANK=str(job.global_rank), WORLD_SIZE=str(job.num_tasks), LOCAL_RANK=str(job.local_rank),
                       LOCAL_WORLD_SIZE=str(job.num_tasks // job.num_nodes))
        return env

    def __call__(self) -> int:
        import submitit

        from localagg.process import die_with_parent

        job = submitit.JobEnvironment()
        env = {**os.environ, **self.env, **self.rank_env(job)}
        env.pop("DVC_STAGE", None)  # the stage's owner is this task, not the dvc on the submitting host
        child = subprocess.Popen([sys.executable, "-m", "stages", *self.argv], cwd=self.cwd, env=env,
                                 start_new_session=True, preexec_fn=die_with_parent)

        def forward(signum, frame):
            try:
                os.killpg(child.pid, signum)  # the stage and its workers (Detectron2's), once
            except ProcessLookupError:
                pass

        for sig in STOP_SIGNALS:
            signal.signal(sig, forward)
        code = child.wait()
        if job.global_rank == 0:
            status = Path(self.folder) / f"{job.job_id}_status.json"
            attempt = restarts_so_far()
            if stopped_by(code) == signal.SIGUSR2 and attempt < self.max_requeues:
                # written first: `scontrol requeue` ends this step, and the waiting stage must
                # know that the ended state it may see next is a requeue in flight
                write_status(status, code, True, attempt)
                if not self.requeue(job, attempt):
                    write_status(status, code, False, attempt)
            else:
                if stopped_by(code) == signal.SIGUSR2:
                    self.say_out_of_requeues(job, attempt)
                write_status(status, code, False, attempt)
        if code:
            raise SystemExit(code)  # submitit records the failure; SLURM sees the task's status
        return 0

    def say_out_of_requeues(self, job, done: int) -> None:
        print(f"error: SLURM job {job.job_id} reached its time limit or was preempted after {done} requeue(s), "
              f"launcher.slurm.max_requeues = {self.max_requeues}; its checkpoint is saved. Run `dvc repro` again "
              "to continue from it (or raise launcher.slurm.max_requeues or time_min).", file=sys.stderr, flush=True)

    def requeue(self, job, done: int) -> bool:
        print(f"localagg: requeueing SLURM job {job.job_id} (requeue {done + 1} of at most {self.max_requeues}); "
              "it resumes from the checkpoint just saved", file=sys.stderr, flush=True)
        proc = subprocess.run(["scontrol", "requeue", str(job.job_id)], capture_output=True, text=True, timeout=60)
        if proc.returncode:
            print(f"error: `scontrol requeue {job.job_id}` failed: {proc.stderr.strip()}; its checkpoint is saved. "
                  "Run `dvc repro` again to continue from it.", file=sys.stderr, flush=True)
        return proc.returncode == 0


def restarts_so_far() -> int:
    """How many times SLURM has requeued this job before the attempt now running."""
    return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)


def write_status(path: Path, code: int, requeued: bool, attempt: int) -> None:
    """How task 0's attempt `attempt` (0 = the first run, k = after k requeues) ended, and
    whether it asked SLURM to requeue the job. The waiting stage reads it: an ended state of
    the job while a requeue is in flight is not the job's end, and once SLURM has forgotten
    the job this is all that is left of how it ended."""
    from localagg.io import write_json

    write_json(path, {"code": code, "requeued": requeued, "attempt": attempt})
