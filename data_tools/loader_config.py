"""The loader's config, apart from the loader: importing anything under data_tools.loaders
loads torch (seconds, more on a busy machine), and resolving or printing a config, or
reporting a wrong key in it, must not wait for that."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from data_tools.common.fields import bounded, check_ranges
from data_tools.common.threads import cores_per_rank

BACKENDS = ("auto", "dali", "dali-cpu", "pil")


@dataclass
class LoaderConfig:
    backend: Literal["auto", "dali", "dali-cpu", "pil"] = "auto"  # auto: dali on a GPU, dali-cpu on CPU
    batch_size: int = bounded(64, lo=1)          # per rank
    workers: int = bounded(0, lo=0, hi=1024)     # worker processes (pil, dali-cpu) or threads (dali); 0: every core we may use
    image_size: int = bounded(224, lo=8)         # side of the square crop the model sees
    resize_size: int = bounded(256, lo=8)        # eval: shorter side before the centre crop
    min_scale: float = bounded(0.08, lo=0, hi=1, open_lo=True)  # train: smallest RandomResizedCrop area, as a fraction
    shuffle_buffer: int = bounded(10_000, lo=1)  # train: a rank's samples are shuffled within windows this long
    sqrt_resample: bool | None = None  # None: on for hashtag (multi-label) data, off for single-label
    seed: int = bounded(0, lo=0, hi=2**32 - 1)   # shard order and augmentation draws
    drop_last: bool | None = None    # None: train drops a last partial batch, eval keeps it
    # Shards at a URL (s3://, gs://, http(s)://) are downloaded ahead into a local cache:
    cache_dir: str | None = None     # None: the system's temporary folder
    cache_gb: float = bounded(20.0, lo=0, open_lo=True)  # shards held ahead of the rank, at most

    def worker_count(self) -> int:
        return self.workers or cores_per_rank()

    def check(self) -> None:
        check_ranges(self)
        if self.backend not in BACKENDS:
            raise ValueError(f"config key 'backend' must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.resize_size < self.image_size:
            raise ValueError(f"config key 'resize_size' ({self.resize_size}) must be >= 'image_size' "
                             f"({self.image_size}): eval crops image_size out of it")
