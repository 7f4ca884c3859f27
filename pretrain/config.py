"""The pretraining config: defaults here, presets in configs/pretrain/*.yaml."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from data_tools.loaders import LoaderConfig
from pretrain.optim import OptimConfig


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
    total_images: int = 1_000_000
    accum_steps: int = 1               # global batch = loader.batch_size x world size x accum_steps
    loss: Literal["softmax", "sigmoid", "ce", "auto"] = "auto"  # auto: softmax (k-hot/k) or ce
    bf16: bool = True                  # autocast on GPU
    channels_last: bool = True         # on GPU
    compile: bool = False
    sync_bn: bool = False
    max_bad_steps: int = 5             # consecutive non-finite losses before the run stops
    bottleneck_seconds: float = 3.0    # loader vs model speed report when a run starts (0: skip)
    stop_check_steps: int = 10         # ranks agree on a stop signal every this many steps

    def check(self) -> None:
        if self.total_images < 1 or self.accum_steps < 1 or self.max_bad_steps < 1 or self.stop_check_steps < 1:
            raise ValueError("'train.total_images', 'train.accum_steps', 'train.max_bad_steps' and "
                             "'train.stop_check_steps' must be >= 1")


@dataclass
class CheckpointConfig:
    every_images: int = 5_000_000
    keep: int = 3


@dataclass
class LogConfig:
    every_steps: int = 20
    wandb: Literal["auto", "online", "offline", "off"] = "auto"
    project: str = "wsl"
    name: str | None = None
    sample_images: int = 8             # images with their tags shown in W&B


@dataclass
class EvalConfig:
    every_images: int = 0              # 0: only at the end
    max_images: int = 50_000


@dataclass
class PretrainConfig:
    run_dir: str = ""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0
    dist_timeout_s: float = 600.0      # a dead rank fails the job after this, never a hang
    resume_with_changes: bool = False  # continue a run_dir whose checkpoint has another config
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
