"""How many threads a rank may run: its share of the cores, less its loader workers.

torch starts one intra-op thread per core and OpenMP's threads spin while they wait for
work. Beside the loader's worker processes (one per core by default), and more so beside
other jobs on a shared machine, those threads fight for the same cores: every parallel
region waits for its slowest thread, which the scheduler has just preempted. On 2 cores
beside four busy processes the tiny pretraining fell to 1/8 of its unloaded rate, against
1/3 for a fair share (docs/benchmarks.md, "Thread budget").

OMP_WAIT_POLICY is read once, when torch loads OpenMP, so `limit` sets the environment
before the first `import torch` when it can (the CLI resolves and checks a config without
torch), and torch's own thread count whenever it is called.
"""
from __future__ import annotations

import math
import os
import sys
from pathlib import Path

from data_tools.common.signals import quiet_stop

CGROUP = Path("/sys/fs/cgroup")


def cgroup_cpus(root: Path = CGROUP, own: Path = Path("/proc/self/cgroup")) -> float | None:
    """The CPU quota of this process's cgroup in cores (docker --cpus, SLURM, Kubernetes
    limits), or None where there is none: cgroup v2's cpu.max, or v1's cfs quota/period."""
    for line in read(own).splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            quota, _, period = read(root / path.lstrip("/") / "cpu.max", root / "cpu.max").partition(" ")
        elif "cpu" in controllers.split(","):
            folder = root / controllers
            quota = read(folder / path.lstrip("/") / "cpu.cfs_quota_us", folder / "cpu.cfs_quota_us")
            period = read(folder / path.lstrip("/") / "cpu.cfs_period_us", folder / "cpu.cfs_period_us")
        else:
            continue
        if quota.strip().lstrip("-").isdigit() and int(quota) > 0 and period.strip().isdigit():
            return int(quota) / int(period)
    return None


def read(*paths: Path) -> str:
    """The first of `paths` that can be read, or ""."""
    for path in paths:
        try:
            return path.read_text()
        except OSError:
            continue
    return ""


def cores() -> int:
    """The cores this process may use: its CPU set, capped by a cgroup quota."""
    allowed = len(os.sched_getaffinity(0))
    quota = cgroup_cpus()
    return allowed if quota is None else max(1, min(allowed, math.ceil(quota)))


def cores_per_rank() -> int:
    """This process's cores, shared with the other ranks on its node: torchrun gives every
    rank the node's whole CPU set, so 8 ranks each taking every core would start 8x too
    many workers."""
    local_ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, cores() // local_ranks)


def budget(requested: int, loader_workers: int) -> int:
    """A rank's torch threads: `requested` (a config's `threads`) if set, else the rank's
    share of the cores less its loader workers, at least 1."""
    return requested if requested > 0 else max(1, cores_per_rank() - loader_workers)


def limit(requested: int, loader_workers: int) -> str:
    """Hold this process to its budget (threads=-1: leave torch's default, a thread per
    core); returns what it did, for the run's first log line."""
    if requested < 0:
        return f"threads: torch's default, {torch_threads()} (threads=-1)"
    threads = budget(requested, loader_workers)
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # a waiting thread sleeps instead of spinning
    if "torch" in sys.modules:
        import torch
        torch.set_num_threads(threads)
    if requested > 0:
        return f"threads: {threads} torch (threads={requested})"
    return (f"threads: {threads} torch ({cores_per_rank()} cores, {loader_workers} loader "
            f"worker{'s' * (loader_workers != 1)})")


def torch_threads() -> int:
    import torch
    return torch.get_num_threads()


def pool_worker() -> None:
    """A process pool's initializer: the libraries' own thread pools down to one thread,
    since the pool already runs a process per core; and Ctrl-C left to the parent."""
    quiet_stop()
    os.environ["OMP_NUM_THREADS"] = "1"
    for name, call in (("torch", "set_num_threads"), ("cv2", "setNumThreads")):
        if name in sys.modules:
            getattr(sys.modules[name], call)(1)
