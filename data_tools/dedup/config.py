"""`wsl data dedup`'s configuration: the descriptor, the index, calibration, the second
look at candidate pairs, and the stage's own keys."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from data_tools.common.fields import bounded
from data_tools.common.part import parse_part
from data_tools.dedup.keypoints import MIN_COVER, MIN_INLIERS
from data_tools.dedup.verify import ALIGN_THRESHOLD


@dataclass
class DescriptorConfig:
    name: Literal["dct", "learned"] = "dct"
    side: int = bounded(32, lo=8, hi=256)          # dct: grey thumbnail side
    block: int = bounded(8, lo=2, hi=64)           # dct: low-frequency block kept
    checkpoint: str | None = None                  # learned: TorchScript, backbone.pt or state dict
    arch: str | None = None                        # learned: torchvision model of a plain state dict
    size: int = bounded(224, lo=32, hi=1024)       # learned: input side
    batch: int = bounded(64, lo=1, hi=4096)        # learned: images per forward


@dataclass
class SearchConfig:
    index: Literal["auto", "flat", "ivf"] = "auto" # auto: flat up to search.FLAT_UP_TO views, else ivf
    nlist: int | None = bounded(None, lo=1)        # ivf cells; None: about 4*sqrt(views) (search.index_plan)
    nprobe: int | None = bounded(None, lo=1)       # ivf cells scanned per query; None: search.PROBES
    self_k: int = bounded(10, lo=2, hi=1000)       # --self: neighbours per training image


@dataclass
class CalibrationConfig:
    images: int = bounded(500, lo=2)               # against images copied synthetically
    precision: float = bounded(0.99, lo=0, hi=1, open_lo=True)  # target when calibrating
    seed: int = bounded(0, lo=0, hi=2**32 - 1)  # which images get copied, and how


@dataclass
class VerifyConfig:
    RENAMED: ClassVar[dict[str, str]] = {"enabled": "method"}  # enabled=false is method=off
    method: Literal["local", "align", "off"] = "local"  # local: dedup/keypoints.py; align: verify.py; off: score alone
    candidates: float = bounded(0.75, lo=-1, hi=1) # align: descriptor score from which a pair is aligned
    threshold: float = bounded(ALIGN_THRESHOLD, lo=-1, hi=1)  # align: aligned score from which it is a copy
    shortlist: int = bounded(8, lo=1, hi=64)       # local: evaluation images shortlisted per training image
    floor: float = bounded(0.5, lo=-1, hi=1)       # local: global score from which a shortlisted pair is verified
    certain: float = bounded(0.97, lo=-1, hi=1)    # local: global score that is a copy without verification
    min_inliers: int = bounded(MIN_INLIERS, lo=3)  # local: RANSAC inliers of a copy
    min_cover: float = bounded(MIN_COVER, lo=0, hi=1)  # local: share of the evaluation image they span
    screen: int = bounded(0, lo=0)                 # local: below this many inliers at 128 px, not verified (0: off)


@dataclass
class DedupConfig:
    train: str = ""
    against: list[str] = field(default_factory=list)   # DIR or NAME=DIR
    out: str = ""
    apply: str | None = None                            # write filtered shards here
    self_dedup: bool = False
    components: bool = False                            # --self: remove whole components touching a match
    threshold: float | None = bounded(None, lo=-1, hi=1)  # None: the descriptor's, or calibrated
    descriptor: DescriptorConfig = field(default_factory=DescriptorConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    part: str = "0/1"
    merge: bool = False                                 # only join finished shard results
    workers: int = bounded(0, lo=0, hi=1024)            # 0: one per core
    report_pairs: int = bounded(300, lo=1)              # matched pairs shown in report.html
    near_misses: int = bounded(50, lo=0)                # closest non-matches shown
    progress: bool = True

    def check(self) -> None:
        if not self.train:
            raise ValueError("config key 'train' is required (the training shard directory, --train)")
        if not self.out:
            raise ValueError("config key 'out' is required (the result directory, --out)")
        if not self.against:
            raise ValueError("give at least one evaluation set to filter against (--against DIR or NAME=DIR)")
        if self.descriptor.name == "learned" and not self.descriptor.checkpoint:
            raise ValueError("'descriptor.checkpoint' is required for descriptor 'learned' (a local file)")
        if self.descriptor.block > self.descriptor.side:
            raise ValueError("'descriptor.block' must be <= 'descriptor.side'")
        if self.components and not self.self_dedup:
            raise ValueError("components=true needs --self (it removes near-duplicate chains among training images)")
        parse_part(self.part)
