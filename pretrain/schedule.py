"""The learning-rate schedule and its config, without torch (a config is resolved and
checked before torch is loaded: seconds, more on a busy machine).

The schedule is a pure function of images seen rather than epochs or steps, so it
does not change when the global batch, the world size or the data's epoch length
changes, and a resumed run lands on exactly the same value.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from data_tools.common.fields import bounded

SCHEDULES = ("step", "cosine")
IMAGENET_EPOCH = 1_281_167


@dataclass
class OptimConfig:
    lr_per_256: float = bounded(0.1, lo=0, open_lo=True)  # scaled linearly with the global batch (Goyal et al. 2017)
    momentum: float = bounded(0.9, lo=0, hi=1, open_hi=True)
    weight_decay: float = bounded(1e-4, lo=0)
    nesterov: bool = True
    skip_bn_bias: bool = True          # no weight decay on norm parameters and biases
    warmup_images: int = bounded(5 * IMAGENET_EPOCH, lo=0)  # Goyal et al.'s 5 ImageNet epochs
    schedule: Literal["step", "cosine"] = "step"
    steps: int = bounded(13, lo=0, hi=64)  # halvings for "step"; the paper halves 13 times
    final_lr: float = bounded(0.0, lo=0)   # floor of "cosine"

    def check(self) -> None:
        if self.nesterov and self.momentum == 0:
            raise ValueError("config key 'nesterov' needs 'momentum' > 0")

    def lr(self, images_seen: int, global_batch: int, total_images: int) -> float:
        """The learning rate after `images_seen` images of a `total_images` run."""
        peak = peak_lr(self.lr_per_256, global_batch)
        return lr_at(images_seen, peak=peak, start=min(self.lr_per_256, peak),
                     warmup_images=self.warmup_images, total_images=total_images,
                     schedule=self.schedule, steps=self.steps, final_lr=self.final_lr)


def peak_lr(lr_per_256: float, global_batch: int) -> float:
    """Linear scaling rule: the learning rate grows with the global batch."""
    return lr_per_256 * global_batch / 256


def lr_at(images_seen: int, *, peak: float, start: float = 0.1, warmup_images: int,
          total_images: int, schedule: str = "step", steps: int = 13, final_lr: float = 0.0) -> float:
    """Learning rate after `images_seen` training images.

    Args:
        images_seen: images consumed so far, over all workers.
        peak: the rate reached at the end of warm-up (see `peak_lr`).
        start: the rate at image 0. Goyal et al. ramp up from the rate of a 256-image
            batch (lr_per_256, 0.1 by default) to the peak of a larger batch;
            OptimConfig.lr starts at min(lr_per_256, peak), so a global batch under 256
            holds its (lower) peak from the start instead of ramping downhill.
        warmup_images: length of the linear ramp from `start` to `peak`.
        total_images: length of the whole run; past it the last value holds.
        schedule: "step" halves the rate `steps` times at equally spaced points that cut
            the post-warm-up span into steps + 1 equal parts; "cosine" anneals to `final_lr`.
        steps: number of halvings of "step".
        final_lr: the floor of "cosine".
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule '{schedule}' (known: {', '.join(SCHEDULES)})")
    if not 0 <= warmup_images < total_images:
        raise ValueError(f"need 0 <= warmup_images < total_images, got {warmup_images} and {total_images}")
    if images_seen < 0 or steps < 0:
        raise ValueError(f"images_seen and steps must be >= 0, got {images_seen} and {steps}")
    if images_seen < warmup_images:
        return start + (peak - start) * images_seen / warmup_images
    done = min(images_seen, total_images) - warmup_images
    span = total_images - warmup_images
    if schedule == "step":
        # Floor division keeps the step boundaries exact for integer image counts.
        return peak * 0.5 ** min(steps, done * (steps + 1) // span)
    return final_lr + (peak - final_lr) * 0.5 * (1 + math.cos(math.pi * done / span))
