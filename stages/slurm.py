"""A stage as one SLURM job: check, submit (submitit), wait, stream its log, pass on its status.

`run_as_job(...)` is what a stage command does under `launcher.kind: slurm`, in place of
training here. DVC, `dvc exp run` and queued sweeps see an ordinary stage command:

1. Before anything is queued: the process layout must fit the request (the stage's processes
   divide evenly over `nodes`, no more per node than `gpus_per_node`), and `sbatch --test-only`
   with the same request must pass (an unknown partition, account or QOS, more GPUs or nodes
   than the partition has): else one message naming the launcher.slurm keys, exit 2.
2. submitit writes the sbatch script (--requeue, --signal=USR2@signal_delay_s, open-mode
   append) under `log_dir/<job name>/` and submits a `slurm_task.StageTask` for every task.
3. While the job runs, task 0's stdout and stderr are copied to this process's, so
   `dvc repro` prints what a local run prints; the other tasks' logs stay in that folder. A
   requeue (time limit, preemption) is reported and waited through.
4. The job's end is this command's end: exit 0 when it completed, else a message with the job
   id, its state and exit code, and its log, exit 1.
5. SIGINT / SIGTERM of this process (Ctrl-C of `dvc repro`, `kill` of dvc: guard.watch_owner)
   cancel the job (`scancel`; the stage checkpoints at its next step on the SIGTERM SLURM sends
   it) and wait until SLURM has ended it: no job is left running on the cluster.

The stage's output lock (.locks/<stage>.lock, guard.stage_lock) is held here for the job's
whole life and names the job id; a later writer is refused while that job is queued or running,
even if this process was killed with SIGKILL.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from localagg.errors import UserError

from .launcher_config import SlurmParams
from .slurm_task import StageTask

ACTIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING",
          "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD", "SPECIAL_EXIT", "PREEMPTED"}
STATUS = "{job}_status.json"  # task 0 writes the stage's exit code here (read when SLURM has forgotten the job)


def tools_problem() -> str | None:
    missing = [t for t in ("sbatch", "srun", "scontrol", "scancel", "squeue") if shutil.which(t) is None]
    if missing:
        return (f"launcher.kind is slurm but {', '.join(missing)} is not on PATH here; run dvc on a SLURM login node, "
                "or set launcher.kind: local.")
    return None


def layout_of(stage: str, nproc: int, per_node_workers: bool, slurm: SlurmParams, key: str) -> tuple[int, int]:
    """(tasks per node, processes per node) for the stage's `nproc` processes, or a UserError."""
    if nproc % slurm.nodes:
        raise UserError(f"{key} = {nproc} processes do not divide evenly over launcher.slurm.nodes = {slurm.nodes}; "
                        f"set {key} to a multiple of {slurm.nodes}, or change nodes.")
    per_node = nproc // slurm.nodes
    if slurm.gpus_per_node and per_node > slurm.gpus_per_node:
        raise UserError(f"{key} = {nproc} over launcher.slurm.nodes = {slurm.nodes} is {per_node} processes per node, "
                        f"more than launcher.slurm.gpus_per_node = {slurm.gpus_per_node}; raise nodes or lower {key}.")
    return (1 if per_node_workers else per_node), per_node


def sbatch_options(slurm: SlurmParams, job_name: str, tasks_per_node: int) -> dict:
    """The request, as submitit's SlurmExecutor parameters."""
    extra: dict = {"requeue": True}
    for key in ("account", "qos"):
        if getattr(slurm, key):
            extra[key] = getattr(slurm, key)
    extra.update(slurm.sbatch)
    opts = dict(job_name=job_name, time=slurm.time_min, nodes=slurm.nodes, ntasks_per_node=tasks_per_node,
                cpus_per_task=slurm.cpus_per_task, signal_delay_s=slurm.signal_delay_s, setup=list(slurm.setup),
                additional_parameters=extra)
    if slurm.partition:
        opts["partition"] = slurm.partition
    if slurm.gpus_per_node:
        opts["gpus_per_node"] = slurm.gpus_per_node
    if slurm.mem_gb:
        opts["mem"] = f"{slurm.mem_gb}G"
    return opts


def test_only(opts: dict) -> str | None:
    """What `sbatch --test-only` says against this request (None: it would be accepted)."""
    args = ["sbatch", "--test-only", f"--job-name={opts['job_name']}", f"--time={opts['time']}",
            f"--nodes={opts['nodes']}", f"--ntasks-per-node={opts['ntasks_per_node']}",
            f"--cpus-per-task={opts['cpus_per_task']}"]
    for key, flag in (("partition", "partition"), ("gpus_per_node", "gpus-per-node"), ("mem", "mem")):
        if key in opts:
            args.append(f"--{flag}={opts[key]}")
    for key, value in opts["additional_parameters"].items():
        if key == "requeue":
            continue
        flag = key.replace("_", "-")
        args.append(f"--{flag}" if value is True else f"--{flag}={value}")
    try:
        proc = subprocess.run([*args, "--wrap=true"], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return "sbatch --test-only did not answer in 60 s (is slurmctld reachable?)"
    if proc.returncode == 0:
        return None
    lines = [re.sub(r"^sbatch: error: ", "", line) for line in proc.stderr.strip().splitlines() if line.strip()]
    return "; ".join(lines) or f"sbatch --test-only exited {proc.returncode}"


def check_request(stage: str, nproc: int, per_node_workers: bool, slurm: SlurmParams, key: str) -> dict:
    """The submitit parameters of the stage's job, after every check of (1); UserError otherwise."""
    problem = tools_problem()
    if problem:
        raise UserError(problem)
    tasks_per_node, _ = layout_of(stage, nproc, per_node_workers, slurm, key)
    opts = sbatch_options(slurm, job_name(slurm, stage), tasks_per_node)
    refused = test_only(opts)
    if refused:
        asked = ", ".join(f"{k} {getattr(slurm, k)}" for k in ("partition", "account", "qos", "nodes", "gpus_per_node",
                                                                 "cpus_per_task", "mem_gb", "time_min")
                          if getattr(slurm, k) is not None)
        raise UserError(f"SLURM refuses the job for {stage}: {refused}. Asked for: {asked} ({tasks_per_node} task(s) "
                        "per node). Fix launcher.slurm in the params file (`sinfo` lists the partitions and their "
                        "nodes); nothing was queued.")
    return opts


def job_name(slurm: SlurmParams, stage: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.@-]", "_", f"{slurm.job_name_prefix}-{stage}")


def job_state(job_id: str) -> dict | None:
    """{"state", "restarts", "exit_code", "reason"} from `scontrol show job`, None when SLURM no
    longer knows the job (it forgets ended jobs after MinJobAge) or cannot be asked."""
    try:
        proc = subprocess.run(["scontrol", "show", "job", "-o", str(job_id)], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return {"state": "UNKNOWN"}
    if proc.returncode:
        return None
    fields = dict(m.groups() for m in re.finditer(r"(\w+)=(\S*)", proc.stdout))
    return {"state": fields.get("JobState", "UNKNOWN"), "restarts": int(fields.get("Restarts", "0") or 0),
            "exit_code": fields.get("ExitCode", ""), "reason": fields.get("Reason", "")}


class LogTail:
    """Copies what a file gains to a stream (bytes), from where it last stopped."""

    def __init__(self, path: Path, stream):
        self.path, self.stream, self.offset = path, stream, 0

    def pump(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return
        if data:
            self.offset += len(data)
            self.stream.write(data)
            self.stream.flush()


def run_as_job(stage: str, argv: list[str], nproc: int, per_node_workers: bool, slurm: SlurmParams, key: str,
               max_wait_cancel_s: float = 120.0) -> int:
    """Submit the stage command `argv` as one SLURM job, wait for it, return its exit status."""
    import submitit

    from .guard import HELD_ENV, note_job

    slurm = request_for(stage, slurm)
    opts = check_request(stage, nproc, per_node_workers, slurm, key)
    folder = Path(slurm.log_dir) / opts["job_name"]
    folder.mkdir(parents=True, exist_ok=True)
    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=slurm.max_requeues)
    executor.update_parameters(**opts)
    env = {k: os.environ[k] for k in (HELD_ENV, "LOCALAGG_NO_PROGRESS", "PYTHONPATH") if k in os.environ}
    task = StageTask(argv=argv, cwd=os.getcwd(), layout="per_node" if per_node_workers else "per_process",
                     max_requeues=slurm.max_requeues, env=env, folder=str(folder.resolve()))
    job = executor.submit(task)
    job_id = str(job.job_id)
    note_job(job_id)
    out, err = folder / f"{job_id}_0_log.out", folder / f"{job_id}_0_log.err"
    print(f"localagg: {stage} submitted as SLURM job {job_id} ({opts['job_name']}, {slurm.nodes} node(s) x "
          f"{opts['ntasks_per_node']} task(s)); logs: {folder}/{job_id}_*_log.*", file=sys.stderr, flush=True)
    tails = [LogTail(out, sys.stdout.buffer), LogTail(err, sys.stderr.buffer)]
    ended = False
    try:
        final = _wait(job_id, tails, slurm.poll_s, folder)
        ended = True
    finally:
        if not ended:
            _cancel(job_id, tails, max_wait_cancel_s)
    for t in tails:
        t.pump()
    return _outcome(stage, job_id, final, folder, slurm)


def _wait(job_id: str, tails: list[LogTail], poll_s: float, folder: Path) -> dict:
    seen_restarts, last, final_polls = 0, {"state": "UNKNOWN"}, 0
    while True:
        for t in tails:
            t.pump()
        info = job_state(job_id)
        if info is None:  # SLURM has forgotten it: the status file says how it ended
            status = _read_status(folder, job_id)
            return {**last, "state": last["state"] if last["state"] not in ACTIVE else "ENDED", **(status or {})}
        if info.get("restarts", 0) > seen_restarts:
            seen_restarts = info["restarts"]
            print(f"localagg: SLURM job {job_id} was requeued ({seen_restarts} so far); waiting for it to resume",
                  file=sys.stderr, flush=True)
        last = info
        if info["state"] not in ACTIVE and info["state"] != "UNKNOWN":
            final_polls += 1  # a requeue passes through ended states: believe an end seen twice
            if info["state"] == "COMPLETED" or final_polls >= 2:
                return info
        else:
            final_polls = 0
        time.sleep(poll_s)


def _cancel(job_id: str, tails: list[LogTail], max_wait_s: float) -> None:
    """scancel the job and wait until SLURM no longer runs it (its tasks get SIGTERM first)."""
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not cut the wait short
        signal.signal(sig, signal.SIG_IGN)
    print(f"localagg: cancelling SLURM job {job_id} (scancel); the stage saves a checkpoint at its next step",
          file=sys.stderr, flush=True)
    subprocess.run(["scancel", str(job_id)], capture_output=True, timeout=60)
    deadline = time.monotonic() + max_wait_s
    while time.monotonic() < deadline:
        for t in tails:
            t.pump()
        info = job_state(job_id)
        if info is None or info["state"] not in ACTIVE:
            return
        time.sleep(0.5)
    print(f"warning: SLURM job {job_id} is still {info['state']} {max_wait_s:.0f} s after scancel; check `squeue -j "
          f"{job_id}`", file=sys.stderr, flush=True)


def _read_status(folder: Path, job_id: str) -> dict | None:
    try:
        return json.loads((folder / STATUS.format(job=job_id)).read_text())
    except (OSError, ValueError):
        return None


def _outcome(stage: str, job_id: str, final: dict, folder: Path, slurm: SlurmParams) -> int:
    status = _read_status(folder, job_id) or {}
    code = status.get("code")
    if final["state"] == "COMPLETED" or (final["state"] == "ENDED" and code == 0):
        return 0
    from localagg.runtime.signals import stopped_by

    logs = f"{folder}/{job_id}_*_log.*"
    if status.get("requeued") and final.get("restarts", 0) > status.get("attempt", final.get("restarts", 0)):
        # task 0 asked for this requeue; the attempt SLURM ran after it wrote nothing: it never
        # started (slurmd refused it) or died before its stage could end
        print(f"error: {stage}: SLURM requeued job {job_id} ({final.get('restarts')} requeue(s)), but the attempt after "
              f"it ended {final['state']} (reason {final.get('reason') or 'none given'}) before its stage ran to an end: "
              f"SLURM may have refused to start it (see the controller's slurmctld log) or it was killed. Its checkpoint "
              f"is saved. Run `dvc repro` again to continue from it. Logs: {logs}", file=sys.stderr, flush=True)
    elif stopped_by(code) or final["state"] in ("TIMEOUT", "PREEMPTED"):
        print(f"error: {stage}: SLURM job {job_id} stopped ({final['state']}, exit {code if code is not None else final.get('exit_code')}) "
              f"after {final.get('restarts', 0)} requeue(s) (launcher.slurm.max_requeues = {slurm.max_requeues}); its "
              f"checkpoint is saved. Run `dvc repro` again to continue from it, or raise launcher.slurm.time_min or "
              f"max_requeues. Logs: {logs}", file=sys.stderr, flush=True)
    else:
        print(f"error: {stage}: SLURM job {job_id} ended {final['state']} (exit code {final.get('exit_code') or code}); "
              f"its log is above, every task's in {logs}", file=sys.stderr, flush=True)
    return 1


def request_for(stage: str, slurm: SlurmParams) -> SlurmParams:
    """The stage's request: `prepare` is one process without a GPU (its decode check uses the
    task's cores), whatever nodes and GPUs the training stages ask for."""
    return slurm.model_copy(update={"nodes": 1, "gpus_per_node": 0}) if stage == "prepare" else slurm


def stage_processes(stage: str, sections: dict) -> tuple[int, str, bool]:
    """(processes, the key that sets them, workers started per node) of a stage's job."""
    if stage == "prepare":
        return 1, "prepare", False
    if stage == "detection":
        return sections["detection"].num_gpus, "detection.num_gpus", True
    return sections[stage].num_processes, f"{stage}.num_processes", False


def check_problems(sections: dict) -> tuple[list[str], str | None]:
    """For `localagg check`: (what SLURM would refuse for each stage run as a job, a note when
    SLURM cannot be asked from here). Nothing with launcher.kind: local."""
    launcher = sections.get("launcher")
    if launcher is None or launcher.kind != "slurm":
        return [], None
    if tools_problem():
        return [], "launcher.kind is slurm, but SLURM's commands are not on PATH here: the job requests were not checked"
    problems: list[str] = []
    for stage in launcher.stages:
        nproc, key, per_node = stage_processes(stage, sections)
        try:
            check_request(stage, nproc, per_node, request_for(stage, launcher.slurm), key)
        except UserError as err:
            problems.append(str(err))
    return problems, None
