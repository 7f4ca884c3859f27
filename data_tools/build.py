"""`wsl data build`: tagged images → canonical labels → vocabulary → verified shards.

The stage's configuration, how a record's tags become WordNet synsets (Labeler) and which
synsets make the vocabulary (choose_vocab); the two passes that write the shards are
data_tools/writing's, shared with `wsl data convert`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from data_tools.common.fields import bounded
from data_tools.common.part import parse_part
from data_tools.inputs.sources import ImageFolderSource, ManifestSource, Record
from data_tools.labels import vocab
from data_tools.labels.wordnet import WordNet
from data_tools.writing import write_dataset
from data_tools.writing.count import Tally


@dataclass
class InputConfig:
    manifest: str | None = None      # JSONL {"path", "tags"} or TSV path<TAB>tags
    imagefolder: str | None = None   # root/CLASS/IMAGE, single-label
    root: str | None = None          # base of relative paths (default: the manifest's folder)


@dataclass
class VocabConfig:
    top_k: int = bounded(17000, lo=1)            # labels kept: the synsets with the most images
    min_count: int = bounded(1, lo=1)            # images a synset needs to be kept
    restrict: str | None = None      # file of synset ids, e.g. the ImageNet-1k wnids
    reuse: str | None = None         # another build's vocabulary.tsv (or its directory): the same
                                     # labels in the same order, as a held-out set needs
    wordnet_dir: str | None = None   # default: Debian's /usr/share/wordnet


@dataclass
class ImageConfig:
    max_side: int | None = bounded(None, lo=32)  # longer side above this is downscaled (None: keep)
    max_pixels: int = bounded(89_478_485, lo=1)  # larger images are skipped as decompression bombs
    quality: int = bounded(95, lo=1, hi=100)     # JPEG quality of converted images


@dataclass
class ShardConfig:
    name: str = "train"              # shard files are NAME-000000.tar
    target_mb: float = bounded(256.0, lo=0, open_lo=True)  # shard size aimed at
    samples: int | None = bounded(None, lo=1)   # samples per shard (about, with order=hash); overrides target_mb
    # hash: each record goes to the shard its key's hash picks, shards hold their records in
    # hash order, so batches are mixed whatever the input's order (a crawl is grouped by
    # tag); input: the input's order, every shard but the last exactly `samples` long.
    order: Literal["hash", "input"] = "hash"


@dataclass
class BuildConfig:
    output: str = ""                 # the shard directory (new, empty or an earlier build of this input)
    input: InputConfig = field(default_factory=InputConfig)
    vocab: VocabConfig = field(default_factory=VocabConfig)
    images: ImageConfig = field(default_factory=ImageConfig)
    shards: ShardConfig = field(default_factory=ShardConfig)
    part: str = "0/1"                # i/N: build every N-th shard from shard i (a SLURM array task)
    workers: int = bounded(0, lo=0, hi=1024)  # 0: one per core; 1: no worker processes
    seed: int = bounded(0, lo=0, hi=2**32 - 1)  # order of an ImageFolder's files
    progress: bool = True

    def check(self) -> None:
        if not self.output:
            raise ValueError("config key 'output' is required (the shard directory)")
        if (self.input.manifest is None) == (self.input.imagefolder is None):
            raise ValueError("give exactly one of 'input.manifest' and 'input.imagefolder'")
        parse_part(self.part)
        if self.vocab.reuse and self.vocab.restrict:
            raise ValueError("give at most one of 'vocab.reuse' and 'vocab.restrict'")
        if "-" in self.shards.name or "/" in self.shards.name or "." in self.shards.name:
            raise ValueError("'shards.name' may not contain '-', '/' or '.'")


class Labeler:
    """Raw tags → sorted unique canonical ids (WordNet synsets, or the ImageFolder class)."""

    def __init__(self, source, wordnet_dir: str | None):
        self.source = source
        self.single = source.single_label
        self.wordnet = None if self.single else WordNet(wordnet_dir)
        self.unknown_tags = 0

    def __call__(self, record: Record) -> list[str]:
        if self.single:
            return list(record.tags)
        ids = set()
        for tag in record.tags:
            sid = self.wordnet.lookup(tag)
            if sid is None:
                self.unknown_tags += 1
            else:
                ids.add(sid)
        return sorted(ids)

    def lemma(self, sid: str) -> str:
        if self.wordnet is not None:
            return self.wordnet.lemma(sid)
        return self.source.lemma(sid)


def open_source(cfg: BuildConfig):
    if cfg.input.manifest:
        return ManifestSource(cfg.input.manifest, cfg.input.root)
    return ImageFolderSource(cfg.input.imagefolder, cfg.seed)


def choose_vocab(cfg: BuildConfig, source, labeler: Labeler, tally: Tally) -> list[vocab.Entry]:
    if source.single_label:
        chosen = list(source.classes)
    elif cfg.vocab.reuse:
        path = Path(cfg.vocab.reuse)
        chosen = [e.synset for e in vocab.read(path / "vocabulary.tsv" if path.is_dir() else path)]
    else:
        if not tally.records:
            raise ValueError("the input has no records (an empty manifest)")
        if not tally.counts:
            dropped = ", ".join(f"{k}={v}" for k, v in sorted(tally.dropped.items()) if v)
            hint = ("; not one record has a tag: a manifest is JSONL ({\"path\": ..., \"tags\": [...]}) or TSV "
                    "with a tab between the path and the tags" if tally.dropped.get("no_tags") == tally.records else "")
            raise ValueError(f"no record of the input has a tag WordNet knows ({tally.records} records; {dropped}){hint}")
        restrict = vocab.read_synset_list(cfg.vocab.restrict) if cfg.vocab.restrict else None
        chosen = vocab.select(tally.counts, cfg.vocab.top_k, cfg.vocab.min_count, restrict)
    if not chosen:
        raise ValueError("the vocabulary is empty: no tag of the input reached vocab.min_count"
                         + (" within vocab.restrict" if cfg.vocab.restrict else ""))
    return [vocab.Entry(sid, labeler.lemma(sid), tally.counts[sid]) for sid in chosen]


def build(cfg: BuildConfig) -> dict:
    source = open_source(cfg)
    return write_dataset(cfg, source, lambda: Labeler(source, cfg.vocab.wordnet_dir), choose_vocab)
