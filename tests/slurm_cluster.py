"""A one-host SLURM cluster for the tests: munged, slurmctld and slurmd from Debian's packages,
with their config, state, spool, logs and PID files under one temporary folder.

`OneHostCluster(root).start()` installs the packages when they are missing (as root, through
apt-get, as the set-up installs Fashion-MNIST), writes slurm.conf (this host with its CPUs, one
partition `debug`, requeue allowed, no accounting), starts the daemons and waits until the node
is idle; `stop()` ends the daemons it started, by the PIDs in their PID files. `env` is what a
client needs (SLURM_CONF). `unavailable()` says why this machine cannot run one (None if it can).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
BINARIES = ("slurmctld", "slurmd", "sbatch", "munged")


def unavailable() -> str | None:
    """Why no cluster can be started here, or None."""
    if all(shutil.which(b) for b in BINARIES):
        return None
    if os.geteuid() != 0:
        return "the SLURM daemons are not installed and installing them needs root"
    if shutil.which("apt-get") is None:
        return "the SLURM daemons are not installed and there is no apt-get to install them"
    return None


def install() -> None:
    if all(shutil.which(b) for b in BINARIES):
        return
    lock = ["-o", f"DPkg::Lock::Timeout={os.environ.get('APT_LOCK_TIMEOUT_S', '600')}"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(["apt-get", *lock, "install", "-y", "-qq", *PACKAGES], env=env, capture_output=True).returncode:
        subprocess.run(["apt-get", *lock, "update", "-qq"], env=env, check=True, capture_output=True)
        subprocess.run(["apt-get", *lock, "install", "-y", "-qq", *PACKAGES], env=env, check=True, capture_output=True)


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 4000


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class OneHostCluster:
    def __init__(self, root: Path, partition: str = "debug"):
        self.root, self.partition = Path(root), partition
        self.memory_mb = min(8000, _memory_mb() // 2)  # more than the machine has would drain the node
        self.host = socket.gethostname().split(".")[0]
        self.conf = self.root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self._pidfiles: list[Path] = []
        self._held_since: dict[str, float] = {}  # requeued job -> when release_requeued first saw it held
        self.ports = _free_ports(2)

    def _write_conf(self) -> None:
        r = self.root
        for d in ("state", "spool", "log", "run"):
            (r / d).mkdir(parents=True, exist_ok=True)
        self.conf.write_text(f"""ClusterName=localagg-test
SlurmctldHost={self.host}(127.0.0.1)
SlurmctldPort={self.ports[0]}
SlurmdPort={self.ports[1]}
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmUser=root
SlurmdUser=root
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/run/slurmctld.pid
SlurmdPidFile={r}/run/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
ReturnToService=2
JobRequeue=1
KillWait=30
MinJobAge=600
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
NodeName={self.host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory={self.memory_mb} State=UNKNOWN
PartitionName={self.partition} Nodes={self.host} Default=YES MaxTime=INFINITE State=UP
""")

    def start(self, timeout_s: float = 30.0) -> "OneHostCluster":
        install()
        self._write_conf()
        run_dir = Path("/run/munge")
        if subprocess.run(["munge", "-n"], capture_output=True).returncode:  # no munged answers: start ours
            run_dir.mkdir(parents=True, exist_ok=True)
            shutil.chown(run_dir, "munge", "munge")
            subprocess.run(["su", "-s", "/bin/sh", "munge", "-c", "munged --force"], check=True, capture_output=True)
            self._pidfiles.append(run_dir / "munged.pid")
        for daemon, args in (("slurmctld", []), ("slurmd", ["-N", self.host])):
            subprocess.run([daemon, "-f", str(self.conf), *args], env=self.env, check=True, capture_output=True)
            self._pidfiles.append(self.root / "run" / f"{daemon}.pid")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            out = subprocess.run(["sinfo", "-h", "-o", "%T"], env=self.env, capture_output=True, text=True).stdout
            if out.strip() in ("idle", "mixed"):
                return self
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"the test SLURM node did not become idle in {timeout_s} s; see {self.root}/log")

    def stop(self) -> None:
        self.cancel_all()
        for pidfile in reversed(self._pidfiles):
            try:
                pid = int(pidfile.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            for _ in range(100):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)
        self._pidfiles.clear()

    def release_requeued(self, after_s: float = 2.0) -> None:
        """Start requeued jobs soon: SLURM holds a requeued job back (BeginTime) for a minute or
        two, which a cluster can afford and a test cannot. Not at once: slurmd refuses a job
        whose credential was made in the second its old one was revoked (slurmctld.log:
        "Killing non-startable batch JobId=N: Job credential revoked", the job ends FAILED), so
        a job is released only once it has waited `after_s` seconds."""
        out = subprocess.run(["squeue", "-h", "-t", "PENDING", "-o", "%i %r"], env=self.env, capture_output=True,
                             text=True).stdout
        now, waiting = time.monotonic(), set()
        for line in out.splitlines():
            job, _, reason = line.partition(" ")
            if reason.strip() != "BeginTime":
                continue
            waiting.add(job)
            first = self._held_since.setdefault(job, now)
            if now - first >= after_s:
                subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env=self.env,
                               capture_output=True)
                del self._held_since[job]
        for job in set(self._held_since) - waiting:
            del self._held_since[job]

    def cancel_all(self) -> None:
        subprocess.run(["scancel", "--full", "-u", "root"], env=self.env, capture_output=True)

    def squeue(self) -> list[str]:
        out = subprocess.run(["squeue", "-h", "-o", "%i %T"], env=self.env, capture_output=True, text=True).stdout
        return [line for line in out.splitlines() if line.strip()]
