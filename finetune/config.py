"""The fine-tuning config: pretrain's sections plus the backbone, the mode and the probe.

Full fine-tuning runs pretrain's loop unchanged, so it is configured by the same sections
(data, optim, train, checkpoint, log, eval); presets live in configs/finetune/*.yaml.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from data_tools.common.fields import bounded
from pretrain.config import ModelConfig, PretrainConfig


@dataclass
class ProbeConfig:
    """Linear probe on frozen features (finetune.mode=linear)."""
    RENAMED: ClassVar[dict[str, str]] = {"batch_size": "head_batch_size"}  # beside data.loader.batch_size
    head: Literal["logreg", "bn_linear"] = "logreg"   # logreg: L2 sweep (DINOv2); bn_linear: VISSL's head
    features: Literal["res5", "res4"] = "res5"        # global-pooled output of that stage
    c_min: float = bounded(1e-6, lo=0, open_lo=True)  # the sweep's C grid (inverse L2 strength), log-spaced
    c_max: float = bounded(1e5, lo=0, open_lo=True)
    c_steps: int = bounded(45, lo=1, hi=1000)         # DINOv2 sweeps 45 values
    holdout: float = bounded(0.2, lo=0, hi=0.9, open_lo=True)  # share of train that picks C
    max_iter: int = bounded(200, lo=1)                # L-BFGS iterations of each C of the sweep, and of the refit
    # a head converged: largest gradient entry <= this (sklearn's tol), and its objective within ~0.1 % of the optimum
    tolerance: float = bounded(1e-4, lo=0, open_lo=True)
    # the sweep stops once this many values of C in a row after the best score no higher on the holdout; 0: never
    patience: int = bounded(5, lo=0)
    # cached features' storage: float16 halves the files and the probe's reads (accuracy cost: docs/benchmarks.md)
    feature_dtype: Literal["float32", "float16"] = "float32"
    epochs: int = bounded(28, lo=1)                   # bn_linear: VISSL's 28 epochs
    lr: float = bounded(0.01, lo=0, open_lo=True)     # bn_linear: per 256 features
    head_batch_size: int = bounded(256, lo=1)         # bn_linear: features per SGD step (not the loader's images)
    weight_decay: float = bounded(5e-4, lo=0)         # bn_linear (VISSL's linear eval default)
    # bn_linear: training features per image, each a random-resized crop + flip (VISSL trains on
    # such crops); epoch e uses view e mod views, so views = epochs is one fresh crop an epoch.
    # 1: the centre crop. Cached like the rest: views x the feature file.
    views: int = bounded(1, lo=1, hi=1000)


@dataclass
class FinetuneConfig(PretrainConfig):
    backbone: str = ""                 # backbone.pt, a pretrain checkpoint, or a torchvision/timm/WSL state dict
    mode: Literal["full", "linear"] = "full"
    trunk_lr_mult: float = bounded(1.0, lo=0, hi=1)   # trunk LR = head LR x this
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    # "": the name the backbone file records (backbone.pt, checkpoints); required for plain state dicts
    model: ModelConfig = field(default_factory=lambda: ModelConfig(name=""))

    def check(self) -> None:
        if not self.backbone:
            raise ValueError("config key 'backbone' is required (backbone.pt, a checkpoint or a state-dict file)")
        if self.probe.c_min > self.probe.c_max:
            raise ValueError(f"'probe.c_min' ({self.probe.c_min}) must not exceed 'probe.c_max' ({self.probe.c_max})")
        if self.mode == "linear":
            if not self.run_dir or not self.data.train:
                raise ValueError("config keys 'run_dir' and 'data.train' are required")
            self.check_eval()
            if self.probe.views > 1 and self.probe.head != "bn_linear":
                raise ValueError(f"'probe.views' = {self.probe.views} needs 'probe.head' = bn_linear (the logreg "
                                 "sweep picks C on held-out images, which other views of them would leak into)")
            return
        super().check()
