"""A real one-node SLURM for the tests: munged, slurmctld and slurmd, all state in a tmp folder.

Debian's slurm-wlm and munge are installed when missing (as root, through
scripts/install-system-deps.sh, as CI does). No accounting (no slurmdbd, so no sacct), like
many small clusters; preemption signals on (`preempt_send_user_signal`).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from helpers import REPO, free_port

from launch.polling import ENDED, scontrol_states

DAEMONS = ("munged", "slurmctld", "slurmd")


def slurm_conf(root: Path, cpus: int) -> str:
    host = socket.gethostname()
    return f"""\
ClusterName=wsltest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge.sock
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerParameters=sched_interval=1,bf_interval=1
MpiDefault=none
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
SlurmctldParameters=preempt_send_user_signal
JobRequeue=1
KillWait=20
MinJobAge=3600
SlurmdParameters=config_overrides
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=8000 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


class SlurmCluster:
    # 4 CPUs declared whatever the machine has (config_overrides): a 2-task job, or two array
    # parts, fit on a 2-core CI machine.
    def __init__(self, root: Path, cpus: int = 4):
        self.root = root
        self.conf = root / "slurm.conf"
        self.cpus = cpus
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    def start(self) -> None:
        (self.root / "state").mkdir(parents=True)
        (self.root / "spool").mkdir()
        self.root.chmod(0o755)  # munged wants the socket's folder reachable, not writable by others
        key = self.root / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        self.conf.write_text(slurm_conf(self.root, self.cpus))
        r = self.root
        self.run("munged", "--force", f"--socket={r}/munge.sock", f"--key-file={key}", f"--log-file={r}/munged.log",
                 f"--pid-file={r}/munged.pid", f"--seed-file={r}/munged.seed")
        self.run("slurmctld", "-f", str(self.conf))
        self.run("slurmd", "-f", str(self.conf))
        deadline = time.time() + 60
        while time.time() < deadline:
            out = self.run("sinfo", "-h", "-o", "%T", check=False)
            if out.strip() in ("idle", "mixed"):
                return
            time.sleep(0.5)
        raise RuntimeError(f"SLURM did not come up; slurmctld.log:\n{self.log('slurmctld')[-2000:]}")

    def stop(self) -> None:
        self.run("scancel", "--full", "-u", "root", check=False)
        for daemon in reversed(DAEMONS):
            pid_file = self.root / f"{daemon}.pid"
            if pid_file.is_file():
                try:
                    os.kill(int(pid_file.read_text()), signal.SIGTERM)
                except (ProcessLookupError, ValueError):
                    pass
        time.sleep(1)

    def run(self, *cmd: str, check: bool = True) -> str:
        done = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=60)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.strip()}")
        return done.stdout

    def log(self, daemon: str) -> str:
        path = self.root / f"{daemon}.log"
        return path.read_text() if path.is_file() else ""

    def states(self, job_id: str) -> dict[str, str]:
        """{job id: state} from slurmctld (no sacct: works without accounting); arrays give each task."""
        return scontrol_states(self.run("scontrol", "-o", "show", "job", job_id, check=False))

    def wait(self, job_id: str, timeout: float = 240) -> dict[str, str]:
        deadline = time.time() + timeout
        while time.time() < deadline:
            states = self.states(job_id)
            if states and all(s in ENDED for s in states.values()):
                return states
            time.sleep(0.5)
        raise TimeoutError(f"job {job_id} not done after {timeout}s: {self.states(job_id)}")

    def release_requeued(self, job_id: str, timeout: float = 120) -> None:
        """Start a requeued job now: SLURM holds one back for two minutes by default."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.states(job_id).get(job_id) == "PENDING":
                self.run("scontrol", "update", f"JobId={job_id}", "StartTime=now")
                return
            time.sleep(0.2)
        raise TimeoutError(f"job {job_id} was not requeued within {timeout}s: {self.states(job_id)}")

    def processes_of(self, job_id: str) -> list[int]:
        """Pids still running with this job's id in their environment."""
        needle = f"SLURM_JOB_ID={job_id}".encode() + b"\0"
        found = []
        for proc in Path("/proc").glob("[0-9]*"):
            try:
                if needle in (proc / "environ").read_bytes():
                    found.append(int(proc.name))
            except OSError:
                continue
        return found


def ensure_installed() -> None:
    if all(shutil.which(d) for d in DAEMONS) and shutil.which("sbatch"):
        return
    if os.geteuid() != 0:
        pytest.skip("SLURM tests: slurm-wlm and munge are missing and we are not root to install them")
    subprocess.run(["bash", str(REPO / "scripts" / "install-system-deps.sh")], check=True, timeout=900)


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    ensure_installed()
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
