"""Stages as SLURM jobs on a real one-host cluster (Debian's slurmctld, slurmd and munge, run
by tests/slurm_cluster.py): the same bytes as a local run, through `dvc repro` too; a
preemption's requeue resumes to the uninterrupted model; two tasks train as torchrun's two
processes; Ctrl-C of `dvc repro` leaves no job; a request SLURM refuses is caught before
anything is queued. Skipped, with the reason, only where no cluster can be started here."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from .conftest import make_arrays_dataset
from .slurm_cluster import PACKAGES, OneHostCluster, install, unavailable
from .test_dvc_pipeline import TINY, copy_repository

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
POLL = {"poll_s": 0.3, "cpus_per_task": 1, "time_min": 10}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = unavailable()
    if reason is None:
        try:
            install()
        except subprocess.CalledProcessError as err:  # no Debian package source reachable
            reason = f"apt-get could not install {', '.join(PACKAGES)}: {(err.stderr or b'').decode()[-300:]}"
    if reason:
        pytest.skip(f"no SLURM test cluster on this machine: {reason}")
    c = OneHostCluster(tmp_path_factory.mktemp("slurm")).start()
    stop = threading.Event()

    def release():  # requeued jobs start at once (slurm_cluster.release_requeued)
        while not stop.wait(0.3):
            c.release_requeued()

    threading.Thread(target=release, daemon=True).start()
    yield c
    stop.set()
    c.stop()


@pytest.fixture(autouse=True)
def _no_job_left(cluster):
    yield
    cluster.cancel_all()


def _env(cluster) -> dict:
    env = {k: v for k, v in cluster.env.items() if k not in ("PYTHONDONTWRITEBYTECODE", "DVC_STAGE")}
    env.update(PATH=f"{BIN}{os.pathsep}{env['PATH']}", LOCALAGG_NO_PROGRESS="1", OMP_NUM_THREADS="1")
    return env


def _workdir(root: Path, launcher: dict, **ia) -> Path:
    """A project folder with the tiny object set and pretrain_ia params."""
    root.mkdir(parents=True)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["pretrain_ia"].update({"epochs": 4, "batch_size": 4, "knn_k": 5, **ia})
    params["launcher"] = launcher
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    make_arrays_dataset(root / "data/prepared/object")
    return root


def _slurm(**over) -> dict:
    return {"kind": "slurm", "slurm": {**POLL, **over}}


def _localagg(cluster, cwd, *args, **kw):
    return subprocess.Popen([str(BIN / "localagg"), *args], cwd=cwd, env=_env(cluster), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def _wait_for(proc, pattern: str, output: list[str], timeout_s: float = 120) -> re.Match:
    """Read the process's output line by line into `output` until `pattern` matches."""
    deadline = time.monotonic() + timeout_s
    for line in proc.stdout:
        output.append(line)
        found = re.search(pattern, line)
        if found:
            return found
        assert time.monotonic() < deadline, "".join(output)
    raise AssertionError(f"the process ended before printing {pattern!r}:\n{''.join(output)}")


def _finish(proc, output: list[str], timeout_s: float = 180) -> str:
    rest, _ = proc.communicate(timeout=timeout_s)
    return "".join(output) + rest


def _local_model(cluster, tmp_path, name: str, **ia) -> bytes:
    root = _workdir(tmp_path / name, {"kind": "local"}, **ia)
    subprocess.run([str(BIN / "localagg"), "pretrain-ia"], cwd=root, env=_env(cluster), check=True, capture_output=True)
    return (root / "models/ir.pt").read_bytes()


@pytest.fixture(scope="module")
def whole(cluster, tmp_path_factory) -> bytes:
    """The model of an uninterrupted local run of _workdir's params."""
    return _local_model(cluster, tmp_path_factory.mktemp("whole"), "local")


def test_a_preempted_job_requeues_itself_and_ends_with_the_uninterrupted_model(cluster, tmp_path, whole):
    """SIGUSR2 (SLURM's time-limit warning) mid-run: a checkpoint at the next step, task 0
    requeues the job, the job resumes there and writes the model of a run never stopped."""
    root = _workdir(tmp_path / "slurm", _slurm())
    proc, out = _localagg(cluster, root, "pretrain-ia"), []
    job = _wait_for(proc, r"submitted as SLURM job (\d+)", out).group(1)
    _wait_for(proc, r"ir epoch 1/4", out)
    subprocess.run(["scancel", "--signal=USR2", job], env=cluster.env, check=True)
    text = _finish(proc, out)
    print(f"preempted job {job}:\n{text}")
    assert proc.returncode == 0, text
    assert f"requeueing SLURM job {job} (requeue 1 of at most 3)" in text
    assert f"SLURM job {job} was requeued (1 so far)" in text and "resuming at epoch" in text
    assert (root / "models/ir.pt").read_bytes() == whole
    assert cluster.squeue() == []


def test_past_its_requeues_a_job_says_how_to_continue_and_dvc_repro_resumes(cluster, tmp_path, whole):
    root = _workdir(tmp_path / "slurm", _slurm(max_requeues=0))
    proc, out = _localagg(cluster, root, "pretrain-ia"), []
    job = _wait_for(proc, r"submitted as SLURM job (\d+)", out).group(1)
    _wait_for(proc, r"ir epoch 1/4", out)
    subprocess.run(["scancel", "--signal=USR2", job], env=cluster.env, check=True)
    text = _finish(proc, out)
    assert proc.returncode == 1, text
    assert f"SLURM job {job} stopped" in text and "after 0 requeue(s) (launcher.slurm.max_requeues = 0)" in text
    assert "Run `dvc repro` again to continue from it" in text
    assert not (root / "models/ir.pt").exists() and (root / "checkpoints/pretrain_ia/last.pt").is_file()
    again = subprocess.run([str(BIN / "localagg"), "pretrain-ia"], cwd=root, env=_env(cluster), capture_output=True,
                           text=True)
    assert again.returncode == 0 and "resuming at epoch" in again.stdout + again.stderr, again.stderr
    assert (root / "models/ir.pt").read_bytes() == whole


def test_two_tasks_train_as_torchruns_two_processes(cluster, tmp_path):
    """Two SLURM tasks (one process each; ranks, address and port from SLURM's variables) give
    the bytes two torchrun processes give, with the global batch split and sync_bn."""
    two = dict(epochs=2, batch_size=8, num_processes=2, sync_bn=True)
    local = _local_model(cluster, tmp_path, "local", **two)
    root = _workdir(tmp_path / "slurm", _slurm(), **two)
    proc = subprocess.run([str(BIN / "localagg"), "pretrain-ia"], cwd=root, env=_env(cluster), capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 node(s) x 2 task(s)" in proc.stderr and "batch 8 over 2 process(es)" in proc.stderr
    assert (root / "models/ir.pt").read_bytes() == local


@pytest.mark.parametrize("over, fragments", [
    ({"partition": "nope"}, ["SLURM refuses the job for pretrain_ia", "partition nope", "nothing was queued"]),
    ({"gpus_per_node": 2}, ["SLURM refuses the job for pretrain_ia", "gpus_per_node 2", "nothing was queued"]),
    ({"nodes": 3}, ["pretrain_ia.num_processes = 1 processes do not divide evenly over launcher.slurm.nodes = 3"]),
], ids=["unknown-partition", "gpus-the-node-lacks", "uneven-nodes"])
def test_a_request_slurm_cannot_meet_is_refused_before_anything_is_queued(cluster, tmp_path, over, fragments):
    root = _workdir(tmp_path / "w", _slurm(**over))
    proc = subprocess.run([str(BIN / "localagg"), "pretrain-ia"], cwd=root, env=_env(cluster), capture_output=True,
                          text=True)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr, proc.stderr
    assert cluster.squeue() == [] and not (root / "logs").exists()


def test_a_job_whose_submitter_was_killed_still_holds_the_outputs(cluster, tmp_path):
    """kill -9 of the waiting stage leaves its job running: a second writer is refused by job id."""
    root = _workdir(tmp_path / "w", _slurm(), epochs=200)
    proc, out = _localagg(cluster, root, "pretrain-ia"), []
    job = _wait_for(proc, r"submitted as SLURM job (\d+)", out).group(1)
    proc.kill()
    proc.wait()
    second = subprocess.run([str(BIN / "localagg"), "pretrain-ia"], cwd=root, env=_env(cluster), capture_output=True,
                            text=True)
    assert second.returncode == 2, second.stderr
    assert f"SLURM job {job} (" in second.stderr and f"scancel {job}" in second.stderr
    assert [line.split()[0] for line in cluster.squeue()] == [job]


def test_dvc_repro_through_slurm_then_ctrl_c_leaves_no_job(cluster, tmp_path):
    """`dvc repro` runs a stage as a SLURM job and writes the bytes of a local run; switching the
    launcher reruns nothing (no launcher key is a stage param); Ctrl-C of a running `dvc repro`
    cancels its job (which checkpoints), and a direct second writer is refused meanwhile."""
    repo = copy_repository(tmp_path / "repo", {**TINY, "launcher": _slurm()})
    env, dvc = _env(cluster), str(BIN / "dvc")
    run = subprocess.run([dvc, "repro", "pretrain_ia"], cwd=repo, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "submitted as SLURM job" in run.stderr and "ir epoch 1/1" in run.stderr
    via_slurm = (repo / "models/ir.pt").read_bytes()

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["launcher"] = {"kind": "local", "slurm": {**POLL, "partition": "other", "time_min": 60}}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = subprocess.run([dvc, "status", "pretrain_ia"], cwd=repo, env=env, capture_output=True, text=True)
    assert "changed" not in status.stdout, status.stdout
    local = subprocess.run([dvc, "repro", "-f", "-s", "pretrain_ia"], cwd=repo, env=env, capture_output=True, text=True)
    assert local.returncode == 0 and "submitted" not in local.stderr, local.stderr
    assert (repo / "models/ir.pt").read_bytes() == via_slurm

    params["launcher"] = _slurm()
    params["pretrain_ia"]["epochs"] = 100
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # a terminal's Ctrl-C meets SIGINT's default action; a pytest started in the background of a
    # non-interactive shell ignores SIGINT, and its children would inherit that: give dvc the default
    proc = subprocess.Popen([dvc, "repro", "-s", "pretrain_ia"], cwd=repo, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    out: list[str] = []
    job = _wait_for(proc, r"submitted as SLURM job (\d+)", out).group(1)
    _wait_for(proc, r"ir epoch 1/100", out)
    second = subprocess.run([str(BIN / "localagg"), "pretrain-ia"], cwd=repo, env=env, capture_output=True, text=True)
    assert second.returncode == 2 and "another localagg process (PID" in second.stderr, second.stderr
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the terminal signals dvc's whole process group
    text = _finish(proc, out, timeout_s=120)
    assert proc.returncode != 0
    assert f"cancelling SLURM job {job}" in text, text
    assert cluster.squeue() == [], text
    assert (repo / "checkpoints/pretrain_ia/last.pt").is_file(), text  # the job's stage saved at its next step


def test_check_lists_what_slurm_would_refuse_for_each_stage(cluster, tmp_path):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["launcher"] = _slurm(partition="nope")
    params["launcher"]["stages"] = ["pretrain_ia", "detection"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = subprocess.run([str(BIN / "localagg"), "check"], cwd=tmp_path, env=_env(cluster), capture_output=True,
                          text=True)
    assert proc.returncode == 2, proc.stderr
    assert "2 problem(s)" in proc.stderr
    for stage in ("pretrain_ia", "detection"):
        assert f"SLURM refuses the job for {stage}: invalid partition specified: nope" in proc.stderr, proc.stderr
    params["launcher"]["slurm"]["partition"] = None
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    ok = subprocess.run([str(BIN / "localagg"), "check"], cwd=tmp_path, env=_env(cluster), capture_output=True,
                        text=True)
    assert ok.returncode == 0, ok.stderr
