"""`wsl data convert imagenet|cub|places ROOT OUTPUT`: a labelled dataset as distributed →
the same verified shards, manifest and index files as `wsl data build`.

A dataset module reads and checks the layout into a Listing (data_tools/convert/listing.py);
the split is compared with its published counts; then build's write pass runs on it with a
fixed vocabulary (the dataset's classes), so resume, `--part i/N` + merge, image rules and
`wsl data verify` are build's own.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from data_tools.build import ImageConfig, Labeler, ShardConfig, choose_vocab
from data_tools.common.fields import bounded, check_ranges
from data_tools.common.log import say
from data_tools.common.part import parse_part
from data_tools.convert import cub, imagenet, places
from data_tools.convert.listing import LabelledSource, LayoutError, completeness, partial_message
from data_tools.writing import write_dataset

READERS = {"imagenet": imagenet.read, "cub": cub.read, "places": places.read}
SPLITS = {"imagenet": ("train", "val"), "cub": ("train", "test"), "places": ("train", "val")}


@dataclass
class ConvertShardConfig(ShardConfig):
    name: str = ""                   # shard file prefix; default: the split (val-000000.tar)


@dataclass
class ConvertConfig:
    dataset: str = ""                # imagenet | cub | places
    root: str = ""                   # the dataset's folder, as distributed
    output: str = ""                 # the shard directory
    split: str = "train"             # imagenet: train|val; cub: train|test; places: train|val
    strict: bool = False             # a partial split (fewer images than published) is an error, not a warning
    image_root: str | None = None    # places: the image folder under root when several exist (val_256, val_large)
    wordnet_dir: str | None = None   # imagenet: WordNet 3.0 for the lemma column (default: Debian's)
    images: ImageConfig = field(default_factory=ImageConfig)
    shards: ConvertShardConfig = field(default_factory=ConvertShardConfig)
    part: str = "0/1"
    workers: int = bounded(0, lo=0)  # 0: one per core; 1: no worker processes
    seed: int = bounded(0, lo=0)     # order of the samples across the shards
    progress: bool = True

    def check(self) -> None:
        if self.dataset not in SPLITS:
            raise ValueError(f"config key 'dataset' = {self.dataset!r} must be one of {', '.join(SPLITS)}")
        if self.split not in SPLITS[self.dataset]:
            raise ValueError(f"config key 'split' = {self.split!r}: {self.dataset} has {' and '.join(SPLITS[self.dataset])}")
        for key in ("root", "output"):
            if not getattr(self, key):
                raise ValueError(f"config key '{key}' is required")
        if not Path(self.root).is_dir():
            raise FileNotFoundError(f"dataset root not found: {self.root}")
        if Path(self.output).resolve() == Path(self.root).resolve():
            raise ValueError("config key 'output' must not be the dataset root")
        parse_part(self.part)
        if any(ch in self.shards.name for ch in "-/."):
            raise ValueError("config key 'shards.name' may not contain '-', '/' or '.'")


def convert(cfg: ConvertConfig) -> dict:
    check_ranges(cfg)  # also when the config was made in Python, not by data_tools.common.config
    listing = READERS[cfg.dataset](Path(cfg.root), cfg)
    status = completeness(listing)
    if not status["complete"]:
        message = partial_message(listing, status)
        if cfg.strict:
            raise LayoutError(message + " (strict=true)")
        say(f"wsl: warning: {message}; converting what is there (strict=true makes this an error)")
    cfg = dataclasses.replace(cfg, shards=dataclasses.replace(cfg.shards, name=cfg.shards.name or cfg.split))
    source = LabelledSource(listing, cfg.seed)
    return write_dataset(cfg, source, lambda: Labeler(source, None), choose_vocab, extra={"source": status})


def describe(manifest: dict) -> str:
    """One line on the split against its published counts."""
    s = manifest["source"]
    state = "complete" if s["complete"] else "partial"
    return (f"{s['dataset']} {s['split']}: {state}, {s['images']:,} of {s['published_images']:,} images, "
            f"{s['classes']:,} of {s['published_classes']:,} classes")
