"""The `launcher` section: where the heavy stages run (this machine, or SLURM jobs).

No key of this section changes a result: a stage's processes are its own section's
`num_processes` (detection: `num_gpus`), which DVC tracks; the launcher only says where they
run. So dvc.yaml lists no launcher key, and changing the partition, the time limit or even
local -> slurm reruns nothing (a stage trained through SLURM writes the same bytes as a local
run with the same process count; tests/test_slurm.py).

With `kind: slurm`, each stage in `stages` submits itself as one job (stages/slurm.py):

    processes P (the stage's)  over  `nodes` N:  P / N tasks per node, one process per task
    (detection: one task per node, which starts its P / N GPU workers, Detectron2's way)
"""

from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

SLURM_STAGES = ("prepare", "pretrain_ia", "pretrain_la", "supervised", "transfer", "detection")
HEAVY = ("pretrain_ia", "pretrain_la", "supervised", "transfer", "detection")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class SlurmParams(_Section):
    """What each job asks SLURM for (sbatch options; `sbatch` names in the comments)."""

    partition: Optional[str] = Field(None, description="--partition (null: the cluster's default)")
    account: Optional[str] = Field(None, description="--account")
    qos: Optional[str] = Field(None, description="--qos")
    nodes: int = Field(1, ge=1, description="--nodes: the stage's processes are spread evenly over them")
    gpus_per_node: int = Field(0, ge=0, description="--gpus-per-node (0: CPU-only jobs)")
    cpus_per_task: int = Field(8, ge=1, description="--cpus-per-task: cores per process (loader workers, decoding)")
    mem_gb: Optional[int] = Field(None, ge=1, description="--mem per node in GB (null: the partition's default)")
    time_min: int = Field(1440, ge=1, description="--time in minutes; a job that reaches it requeues itself")
    max_requeues: int = Field(3, ge=0, description="requeues after a time limit or preemption before the stage fails")
    signal_delay_s: int = Field(120, ge=10, description="SIGUSR2 this long before the time limit (--signal): "
                                                        "time for one step and a checkpoint")
    job_name_prefix: str = Field("localagg", min_length=1, description="--job-name: <prefix>-<stage or cell>")
    log_dir: str = Field("logs/slurm", description="submitit's folder per job: scripts, pickles, every task's log")
    poll_s: float = Field(5.0, gt=0, description="how often the waiting stage reads the job's state and log")
    sbatch: dict[str, Union[str, int, bool]] = Field(
        default_factory=dict, description="more sbatch options, e.g. {constraint: a100, exclusive: true}")
    setup: list[str] = Field(default_factory=list, description="shell lines before the job's srun, e.g. "
                                                               "['module load cuda/12.1']")

    @model_validator(mode="after")
    def _time(self):
        if self.time_min * 60 <= 2 * self.signal_delay_s:
            raise ValueError(f"time_min {self.time_min} (= {self.time_min * 60} s) leaves no time to train before the "
                             f"time-limit signal sent signal_delay_s {self.signal_delay_s} s before the end; raise "
                             f"time_min above {2 * self.signal_delay_s // 60 + 1} min or lower signal_delay_s")
        reserved = {"nodes", "ntasks-per-node", "ntasks_per_node", "gpus-per-node", "gpus_per_node", "signal",
                    "output", "error", "requeue", "open-mode", "job-name", "job_name", "time", "partition"}
        clash = sorted(k for k in self.sbatch if k in reserved)
        if clash:
            raise ValueError(f"sbatch: {', '.join(clash)} are set from launcher.slurm's own keys "
                             "(nodes, gpus_per_node, time_min, partition, ...); set them there")
        return self


class LauncherParams(_Section):
    kind: Literal["local", "slurm"] = Field("local", description="local: this machine (torchrun for several "
                                                                 "processes); slurm: one SLURM job per stage")
    stages: list[Literal[SLURM_STAGES]] = Field(  # type: ignore[valid-type]
        list(HEAVY), description="the stages that run as SLURM jobs with kind: slurm (the others run where dvc runs)")
    slurm: SlurmParams = SlurmParams()
