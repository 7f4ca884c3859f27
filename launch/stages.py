"""The stages `wsl launch` runs: each one's `wsl` subcommand, config class and folders.

A stage plugs in with one line in STAGES. Its config is resolved (launch.submit.resolve,
with the stage's own parser and config class) and checked here, on the submitting machine,
so a wrong key fails in a second instead of in the queue; the job then runs `wsl STAGE -c
RESOLVED.yaml`, exactly what was checked.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from data_tools.dedup.sets import split_spec
from launch.preflight import check_finetune, check_pretrain


@dataclass(frozen=True)
class Stage:
    command: tuple[str, ...]            # the `wsl` subcommand
    config: str                         # "module:Class" of its config dataclass
    output: str                         # dotted config key of the folder it writes
    artifact: str                       # the file in that folder W&B records (dataset manifest, backbone)
    reads: tuple[str, ...] = ()         # dotted keys of the shard folders it reads
    inputs: tuple[str, ...] = ()        # dotted keys of every file or folder that must exist to start
    merge: tuple[str, ...] | None = None  # subcommand joining `--part i/N` outputs; None: no arrays
    trains: bool = False                # stops at a checkpoint through pretrain.stop.request_stop
    check: Callable | None = None       # checks its data and files, as `wsl STAGE` does

    @property
    def name(self) -> str:
        return " ".join(self.command)

    @property
    def job_type(self) -> str:
        return "-".join(self.command)


STAGES = {stage.name: stage for stage in (
    Stage(("data", "build"), "data_tools.build:BuildConfig", output="output", artifact="manifest.json",
          inputs=("input.manifest", "input.imagefolder"), merge=("data", "merge")),
    Stage(("data", "convert"), "data_tools.convert:ConvertConfig", output="output", artifact="manifest.json",
          inputs=("root",), merge=("data", "merge")),
    Stage(("data", "dedup"), "data_tools.dedup.config:DedupConfig", output="out", artifact="summary.json",
          reads=("train",), inputs=("train", "against")),
    Stage(("pretrain",), "pretrain.config:PretrainConfig", output="run_dir", artifact="backbone.pt",
          reads=("data.train",), inputs=("data.train", "data.val"), trains=True, check=check_pretrain),
    Stage(("finetune",), "finetune.config:FinetuneConfig", output="run_dir", artifact="results.json",
          reads=("data.train",), inputs=("data.train", "data.val", "backbone"), trains=True,
          check=check_finetune),
)}


def config_class(stage: Stage) -> type:
    module, name = stage.config.split(":")
    return getattr(importlib.import_module(module), name)


def missing_inputs(stage: Stage, cfg) -> list[str]:
    """`KEY = PATH` for each input the stage names that is not on this machine's file system
    (URLs are not checked): what is missing at submission is missing in the queue too."""
    missing = []
    for key in stage.inputs:
        value = lookup(cfg, key)
        for item in value if isinstance(value, list) else [value]:
            path = split_spec(str(item or ""))[1] if key == "against" else str(item or "")
            if path and "://" not in path and not Path(path).exists():
                missing.append(f"{key} = {path}")
    return missing


def check(stage: Stage, cfg) -> None:
    """The stage's own checks of its data against its config (label types, classes), but not
    of the device: the submitting machine is often a login node without the job's GPUs."""
    if stage.check:
        stage.check(cfg, device=False)


def lookup(cfg, dotted: str):
    for key in dotted.split("."):
        cfg = getattr(cfg, key)
    return cfg


def folder(cfg, dotted: str) -> Path:
    return Path(lookup(cfg, dotted)).resolve()
