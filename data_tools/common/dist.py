"""One distributed environment from torchrun, SLURM or a plain local run.

torchrun sets RANK/WORLD_SIZE/LOCAL_RANK/MASTER_*; an srun task has SLURM_PROCID/NTASKS/
LOCALID and the node list. A half-set environment (say RANK without WORLD_SIZE) is an
error, not a silent single-process run that trains the same data N times.
"""
from __future__ import annotations

import datetime
import os
import re
import subprocess
from dataclasses import dataclass

import torch
import torch.distributed as tdist

TORCHRUN_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    source: str = "local"

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def read_env(environ: dict | None = None) -> DistEnv:
    env = os.environ if environ is None else environ
    present = [k for k in TORCHRUN_KEYS if k in env]
    if present:
        missing = [k for k in TORCHRUN_KEYS if k not in env]
        if missing:
            raise RuntimeError(f"half-set torchrun environment: {', '.join(present)} set but "
                               f"{', '.join(missing)} missing")
        return DistEnv(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env["LOCAL_RANK"]),
                       env["MASTER_ADDR"], int(env["MASTER_PORT"]), "torchrun")
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env and "SLURM_JOB_ID" in env:
        nodes = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or "127.0.0.1"
        port = int(env.get("MASTER_PORT", job_port(int(env["SLURM_JOB_ID"]))))
        return DistEnv(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)),
                       env.get("MASTER_ADDR") or first_host(nodes), port, "slurm")
    return DistEnv()


def job_port(job_id: int) -> int:
    """The rendezvous port of a job: from its id, so two jobs sharing a node do not collide
    and a requeued job (same id) finds the same one; in 10000-29999, below Linux's
    ephemeral range (32768-60999), where the kernel gives ports to outgoing connections
    (one of those made a job's port busy: EADDRINUSE)."""
    return 10000 + job_id % 20000


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list such as 'gpu[012-015,020],cpu1'."""
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True,
                             text=True, timeout=30, check=True).stdout.split()
        if out:
            return out[0]
    except (OSError, subprocess.SubprocessError):
        pass
    match = re.match(r"([^\[,]+)(?:\[(\d+))?", nodelist)
    return match.group(1) + (match.group(2) or "") if match else nodelist


def pick_device(requested: str, env: DistEnv) -> torch.device:
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("device=cuda asked for, but no CUDA device is visible")
    index = env.local_rank % torch.cuda.device_count()
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def init(env: DistEnv, device: torch.device, timeout_s: float) -> None:
    """Join the process group. A rank that dies makes the others fail within timeout_s.
    A launcher's single rank joins one too, so one GPU under torchrun runs the DDP and
    NCCL code of a large job."""
    if env.world_size == 1 and env.source == "local":
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl":
        # Turn a stuck collective into an error instead of a hang.
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    tdist.init_process_group(
        backend, init_method=f"tcp://{env.master_addr}:{env.master_port}", rank=env.rank,
        world_size=env.world_size, timeout=datetime.timedelta(seconds=timeout_s),
        device_id=device if backend == "nccl" else None)


def close() -> None:
    if tdist.is_initialized():
        tdist.destroy_process_group()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum small host-side counters over ranks (one collective for all of them)."""
    return _all_reduce(values, device, tdist.ReduceOp.SUM)


def all_reduce_max(values: list[float], device: torch.device) -> list[float]:
    return _all_reduce(values, device, tdist.ReduceOp.MAX)


def _all_reduce(values: list[float], device: torch.device, op) -> list[float]:
    if not tdist.is_initialized():
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    tdist.all_reduce(tensor, op=op)
    return tensor.tolist()


def from_main(value):
    """Rank 0's `value` on every rank: one decision where each rank's own view could
    differ (two nodes may list a shared directory differently)."""
    if not tdist.is_initialized():
        return value
    box = [value]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(work, *args):
    """`work(*args)` run by rank 0, its result on every rank; what it raises is raised on
    every rank, so none waits for rank 0 in a later collective (it once waited for ever)."""
    if not tdist.is_initialized():
        return work(*args)
    outcome = None
    if tdist.get_rank() == 0:
        try:
            outcome = (work(*args), None)
        except Exception as err:  # every rank raises it below
            outcome = (None, err)
    result, err = from_main(outcome)
    if err is not None:
        raise err
    return result


def barrier() -> None:
    if tdist.is_initialized():
        tdist.barrier()
