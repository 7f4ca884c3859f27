"""Every usable sample of a shard directory: where its JPEG lies, and its labels.

Built once per loader from the DALI index files (byte offsets) and the samples' json, so
a backend reads a sample with one positioned read and never parses a tar: that is what
lets a rank start anywhere in a shard (exact resume) and read only its own samples.
Samples without a JPEG, without json or without labels are skipped here and counted.
"""
from __future__ import annotations

import json
import os
from collections import Counter, OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_tools import shards

OPEN_FILES = 64  # shard files a reader keeps open; a rank reads a handful at a time


@dataclass
class Catalog:
    directory: Path
    files: list[str]          # shard tar names, in manifest order
    starts: np.ndarray        # int64 [shards + 1]: first row of each shard
    shard: np.ndarray         # int32 [rows]: index into files
    offset: np.ndarray        # int64 [rows]: JPEG data offset in the tar
    size: np.ndarray          # int64 [rows]: JPEG size
    keys: list[str]
    label_ptr: np.ndarray     # int64 [rows + 1]: labels of row i are label_idx[ptr[i]:ptr[i+1]]
    label_idx: np.ndarray     # int64
    num_classes: int
    multi: bool               # hashtag data (k-hot targets) or single-label (int64)
    tag_counts: np.ndarray    # images per label, from the manifest
    bad: Counter              # samples skipped, by reason

    def __len__(self) -> int:
        return len(self.keys)

    def labels(self, row: int) -> np.ndarray:
        return self.label_idx[self.label_ptr[row]:self.label_ptr[row + 1]]


def load(directory: str | Path) -> Catalog:
    directory = Path(directory)
    manifest = shards.read_manifest(directory)
    num_classes = manifest["num_classes"]
    files, starts, rows, bad = [], [0], [], Counter()
    for number, entry in enumerate(manifest["shards"]):
        files.append(entry["file"])
        for key, jpg, labels in _shard_samples(directory, entry, num_classes, bad):
            rows.append((number, jpg[0], jpg[1], key, labels))
        starts.append(len(rows))
    if not rows:
        raise ValueError(f"{directory} holds no usable sample (skipped: {dict(bad)})")
    shard, offset, size, keys, labels = zip(*rows)
    lengths = np.fromiter((len(x) for x in labels), np.int64, len(labels))
    return Catalog(
        directory=directory, files=files, starts=np.asarray(starts, np.int64),
        shard=np.asarray(shard, np.int32), offset=np.asarray(offset, np.int64), size=np.asarray(size, np.int64),
        keys=list(keys), label_ptr=np.concatenate([[0], np.cumsum(lengths)]),
        label_idx=np.fromiter((i for x in labels for i in x), np.int64, int(lengths.sum())),
        num_classes=num_classes, multi=manifest["label_type"] == "multi",
        tag_counts=np.asarray(manifest["tag_counts"], np.float64), bad=bad,
    )


def _shard_samples(directory: Path, entry: dict, num_classes: int, bad: Counter):
    """(key, (jpg offset, size), labels) of each usable sample of one shard, in file order."""
    idx = directory / entry["index"]
    if not idx.is_file():
        raise FileNotFoundError(f"{idx} is missing: every shard needs its DALI index (rebuild with `wsl data build`)")
    with open(directory / entry["file"], "rb") as tar:
        for key, members in _index_entries(idx):
            if "jpg" not in members:
                bad["missing_jpg"] += 1
                continue
            if "json" not in members:
                bad["missing_json"] += 1
                continue
            offset, size = members["json"]
            reason, labels = _parse_labels(os.pread(tar.fileno(), size, offset), num_classes)
            if reason:
                bad[reason] += 1
                continue
            yield key, members["jpg"], labels


def _index_entries(idx: Path):
    """(key, {ext: (offset, size)}) per indexed sample; the file names carry the key."""
    lines = idx.read_text().splitlines()
    if not lines or lines[0].split() != [shards.DALI_INDEX_VERSION, str(len(lines) - 1)]:
        raise ValueError(f"{idx}: malformed DALI index (run `wsl data verify`)")
    for line in lines[1:]:
        parts = line.split()
        members = {parts[i]: (int(parts[i + 1]), int(parts[i + 2])) for i in range(0, len(parts), 4)}
        yield shards.split_name(parts[3])[0], members


def _parse_labels(raw: bytes, num_classes: int) -> tuple[str, list[int]]:
    try:
        labels = json.loads(raw)["labels"]
    except (ValueError, KeyError, TypeError):
        return "bad_json", []
    if not isinstance(labels, list) or not labels:
        return "no_labels", []
    if any(not isinstance(i, int) or not 0 <= i < num_classes for i in labels):
        return "bad_labels", []
    return "", labels


class Reader:
    """Positioned reads of JPEG bytes, keeping the most recently used shard files open."""

    def __init__(self, catalog: Catalog):
        self.catalog = catalog
        self.open: OrderedDict[int, int] = OrderedDict()

    def __call__(self, row: int) -> bytes:
        c = self.catalog
        return os.pread(self._fd(int(c.shard[row])), int(c.size[row]), int(c.offset[row]))

    def _fd(self, shard: int) -> int:
        fd = self.open.pop(shard, None)
        if fd is None:
            fd = os.open(self.catalog.directory / self.catalog.files[shard], os.O_RDONLY)
            if len(self.open) >= OPEN_FILES:
                os.close(self.open.popitem(last=False)[1])
        self.open[shard] = fd
        return fd

    def close(self) -> None:
        for fd in self.open.values():
            os.close(fd)
        self.open.clear()
