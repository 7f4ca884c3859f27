"""Where a `wsl launch` job runs: the options, checked before submission, and the submitit executor.

Three clusters: `local` (tasks as processes on this machine, under an explicit time limit,
at most `max_parallel` jobs at once), `slurm` (sbatch through submitit) and `debug` (in
this process, for a debugger). The preemption/time-limit signal is USR2 (submitit's
default: NCCL may catch USR1), sent `signal_delay_s` before the limit to every task.
"""
from __future__ import annotations

import dataclasses
import re
import shutil
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from data_tools.common.fields import bounded

HELP = {
    "cluster": "where the job runs (local needs no SLURM)",
    "nodes": "SLURM nodes",
    "tasks_per_node": "processes (ranks) per node (default: --gpus-per-node, or 1)",
    "gpus_per_node": "GPUs per node",
    "cpus_per_task": "CPUs per task (loader workers + 1 is a good start)",
    "mem": "memory per node, SLURM syntax (e.g. 64G)",
    "time": "time limit, SLURM syntax: minutes, HH:MM:SS or D-HH:MM:SS",
    "partition": "SLURM partition",
    "account": "SLURM account",
    "qos": "SLURM quality of service",
    "constraint": "SLURM node constraint (e.g. volta32gb)",
    "array_parts": "run the stage as N parts (a SLURM array), then its merge as a dependent job",
    "max_parallel": "array parts running at once (on local: jobs at once)",
    "max_requeues": "requeues after preemption or time limit before the job gives up",
    "signal_delay_s": "seconds between the USR2 signal and the time limit: a checkpoint must fit",
    "job_dir": "folder for the job's config, submission record and logs (default: jobs/STAGE-TIME)",
    "group": "W&B group joining a pipeline's stages (default: the name of the stage's data folder)",
    "wandb": "W&B for the data stages' lineage (training stages follow their own log.wandb)",
    "project": "W&B project for the data stages (training stages use log.project)",
    "wait": "with --cluster slurm: stay, print each job's state as it changes, and exit 0 only when "
            "every job completed (Ctrl-C stops the waiting, not the jobs); local jobs are always waited for",
}


@dataclass
class LaunchConfig:
    cluster: Literal["local", "slurm", "debug"] = "local"
    nodes: int = bounded(1, lo=1)
    tasks_per_node: int | None = bounded(None, lo=1)
    gpus_per_node: int = bounded(0, lo=0)
    cpus_per_task: int | None = bounded(None, lo=1)
    mem: str | None = None
    time: str = "60"
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    array_parts: int = bounded(1, lo=1)
    max_parallel: int = bounded(4, lo=1)
    max_requeues: int = bounded(10, lo=0)
    signal_delay_s: int = bounded(120, lo=10)
    job_dir: str | None = None
    group: str | None = None
    wandb: Literal["auto", "online", "offline", "off"] = "auto"
    project: str = "wsl"
    wait: bool = False

    def check(self) -> None:
        minutes = time_minutes(self.time)
        if minutes * 60 <= self.signal_delay_s:
            raise ValueError(f"option --time {self.time} must be longer than --signal-delay-s "
                             f"{self.signal_delay_s}: the job would be told to stop as it starts")
        if self.cluster == "slurm" and shutil.which("sbatch") is None:
            raise ValueError("--cluster slurm: no sbatch on this machine (use --cluster local here)")
        if self.cluster != "slurm" and self.nodes > 1:
            raise ValueError(f"option --nodes {self.nodes} needs --cluster slurm")
        if self.mem is not None and not re.fullmatch(r"\d+[KMGT]?", self.mem):
            raise ValueError(f"option --mem {self.mem!r} must look like 64G (SLURM's syntax)")

    @property
    def ntasks(self) -> int:
        return self.tasks_per_node or max(1, self.gpus_per_node)


def time_minutes(text: str) -> int:
    """SLURM's --time syntax (MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS) in whole minutes."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+(?::\d+){0,2})", text.strip())
    if not match:
        raise ValueError(f"option --time {text!r} must be minutes, MM:SS, HH:MM:SS or D-HH[:MM[:SS]]")
    fields = [int(x) for x in match[2].split(":")]
    if match[1] is None:
        units = {1: (60,), 2: (60, 1), 3: (3600, 60, 1)}[len(fields)]
    else:
        units = (3600, 60, 1)[:len(fields)]
    seconds = int(match[1] or 0) * 86400 + sum(f * u for f, u in zip(fields, units))
    if seconds < 60:
        raise ValueError(f"option --time {text!r} must be at least one minute")
    return -(-seconds // 60)


def add_options(parser) -> None:
    """One --flag per LaunchConfig field; a flag the user does not give stays unset."""
    import argparse
    hints = typing.get_type_hints(LaunchConfig)
    for f in dataclasses.fields(LaunchConfig):
        hint = hints[f.name]
        if hint is bool:
            parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=argparse.SUPPRESS,
                                action="store_true", help=HELP[f.name])
            continue
        literal = typing.get_origin(hint) is Literal
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=argparse.SUPPRESS,
                            type=int if int in (hint, *typing.get_args(hint)) else str,
                            choices=typing.get_args(hint) if literal else None, help=HELP[f.name])


def executor(cfg: LaunchConfig, folder: Path, name: str):
    """A submitit executor for `cfg.cluster`, with every resource option applied."""
    import submitit
    if cfg.cluster == "debug":
        return submitit.DebugExecutor(folder)
    minutes = time_minutes(cfg.time)
    if cfg.cluster == "local":
        ex = submitit.LocalExecutor(folder, max_num_timeout=cfg.max_requeues)
        # Explicit: submitit's local default kills a job after 2 minutes.
        ex.update_parameters(timeout_min=minutes, tasks_per_node=cfg.ntasks, gpus_per_node=cfg.gpus_per_node,
                             signal_delay_s=cfg.signal_delay_s)
        return ex
    ex = submitit.SlurmExecutor(folder, max_num_timeout=cfg.max_requeues)
    optional = {"partition": cfg.partition, "account": cfg.account, "qos": cfg.qos,
                "constraint": cfg.constraint, "mem": cfg.mem, "cpus_per_task": cfg.cpus_per_task,
                "gpus_per_node": cfg.gpus_per_node or None}
    ex.update_parameters(
        job_name=name, time=minutes, nodes=cfg.nodes, ntasks_per_node=cfg.ntasks,
        signal_delay_s=cfg.signal_delay_s, array_parallelism=cfg.max_parallel,
        # One rank that fails ends the others at once, instead of leaving them in a
        # collective until the time limit (and the node drained: submitit PR #1780).
        srun_args=["--kill-on-bad-exit=1"],
        **{k: v for k, v in optional.items() if v is not None})
    return ex
