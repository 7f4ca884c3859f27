"""The pretraining config: defaults here, presets in configs/pretrain/*.yaml."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from data_tools.common.fields import bounded
from data_tools.loader_config import LoaderConfig
from pretrain.schedule import OptimConfig


@dataclass
class ModelConfig:
    name: str = "resnext101_32x16d"
    zero_init_residual: bool = True    # last BN gamma of each block starts at 0 (Goyal et al.)


@dataclass
class DataConfig:
    train: str = ""                    # shard directory written by `wsl data build`
    val: str | None = None             # held-out shards for mAP / precision@k (or top-1/5)
    loader: LoaderConfig = field(default_factory=LoaderConfig)


@dataclass
class TrainConfig:
    total_images: int = bounded(100_000_000, lo=1)  # length of the run, in training images
    accum_steps: int = bounded(1, lo=1, hi=1024)  # global batch = loader.batch_size x world size x accum_steps
    loss: Literal["softmax", "sigmoid", "ce", "auto"] = "auto"  # auto: softmax (k-hot/k) or ce
    bf16: bool = True                  # autocast on GPU
    channels_last: bool = True         # weights in the loaders' channels_last layout
    compile: bool = False
    sync_bn: bool = False
    max_bad_steps: int = bounded(5, lo=1)  # consecutive non-finite losses before the run stops
    bottleneck_seconds: float = bounded(3.0, lo=0, hi=600)  # loader vs model speed report when a run starts (0: skip)
    stop_check_steps: int = bounded(10, lo=1)  # ranks agree on a stop signal every this many steps


@dataclass
class CheckpointConfig:
    every_images: int = bounded(5_000_000, lo=1)  # and on a stop signal (Ctrl-C, SIGTERM, SIGUSR1/2)
    keep: int = bounded(3, lo=1)       # newest checkpoints kept


@dataclass
class LogConfig:
    every_steps: int = bounded(20, lo=1)  # metrics.jsonl / W&B row every this many steps
    wandb: Literal["auto", "online", "offline", "off"] = "auto"
    project: str = "wsl"
    name: str | None = None
    sample_images: int = bounded(8, lo=0, hi=256)  # images with their tags shown in W&B


@dataclass
class EvalConfig:
    every_images: int = bounded(0, lo=0)  # 0: only at the end
    max_images: int = bounded(50_000, lo=1)  # validation images scored
    image_size: int = bounded(0, lo=0)   # eval crop side; 0: data.loader.image_size (larger: "FixRes" eval)
    resize_size: int = bounded(0, lo=0)  # eval resize before the crop; 0: data.loader.resize_size, scaled alike


@dataclass
class PretrainConfig:
    run_dir: str = ""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = bounded(0, lo=0, hi=2**32 - 1)  # weights init
    dist_timeout_s: float = bounded(600.0, lo=0, open_lo=True)  # a dead rank fails the job after this, never a hang
    resume_with_changes: bool = False  # continue a run_dir whose checkpoint has another config
    threads: int = bounded(0, lo=-1, hi=1024)  # torch threads per rank; 0: its cores less its loader workers; -1: torch's own
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def check(self) -> None:
        if not self.run_dir:
            raise ValueError("config key 'run_dir' is required")
        if not self.data.train:
            raise ValueError("config key 'data.train' is required (a `wsl data build` output directory)")
        if self.optim.warmup_images >= self.train.total_images:
            raise ValueError(f"'optim.warmup_images' ({self.optim.warmup_images}) must be below "
                             f"'train.total_images' ({self.train.total_images})")
        self.check_eval()

    def check_eval(self) -> None:
        """The eval resolution, checked at start rather than by the first evaluation's loader,
        which may come at the end of the run."""
        size, resize = self.eval.image_size, self.eval.resize_size
        if 0 < size < 8:
            raise ValueError(f"config key 'eval.image_size' ({size}) must be 0 (data.loader.image_size) or at least 8")
        size = size or self.data.loader.image_size
        if 0 < resize < size:
            raise ValueError(f"config key 'eval.resize_size' ({resize}) must be 0 (scaled with the crop) or at "
                             f"least the eval crop ({size}): evaluation crops the crop out of the resized image")
