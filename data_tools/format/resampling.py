"""The paper's square-root resampling, exact on multi-tag images: fitted once per shard set.

Goal: in the resampled stream, each tag's share (its occurrences among all labels drawn)
goes as sqrt(its image count). Giving an image the mean of 1/sqrt(count) over its tags is
exact only for one-tag images; with 2-3 tags the frequent tags' co-occurrences lift their
share (measured exponent 0.55-0.75 instead of 0.5). Here each tag t gets a weight a_t and an
image's rate is the product of its tags' weights, fitted by iterative proportional fitting
(raking) so that for every tag t

    sum over images i carrying t of rate_i = sqrt(count_t).

A linear model (rate = mean of the tags' weights) cannot reach this when a frequent tag
rides along with rare ones (its share stays too high whatever its own weight); the product
can. Each iteration is one pass over the shards' labels (the sample tables, ~12 bytes a
sample) and 30-60 iterations reach 1e-6: an offline step of `wsl data build`, `merge` and
`index`, never of a loader. A loader needs only the weights (one per tag) and each shard's
rate sum, its share of an epoch (resampling.table).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from tqdm import tqdm

from data_tools.format import shards, tables

FILE = "resampling.table"
ITERATIONS = 500
TOLERANCE = 1e-6  # largest relative error of any tag's share

Labels = Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]]  # yields each shard's (ptr, idx) afresh


def rates(ptr: np.ndarray, idx: np.ndarray, log_weight: np.ndarray) -> np.ndarray:
    """Per row of labels in CSR form, the product of its tags' weights."""
    lengths = np.diff(ptr)
    return np.exp(np.bincount(np.repeat(np.arange(len(lengths)), lengths), log_weight[idx], len(lengths)))


def shares(shard_labels: Labels, log_weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(each tag's expected occurrences, each shard's rate sum) under these weights."""
    per_tag, per_shard = np.zeros(len(log_weight)), []
    for ptr, idx in shard_labels():
        r = rates(ptr, idx, log_weight)
        per_tag += np.bincount(idx, np.repeat(r, np.diff(ptr)), len(log_weight))
        per_shard.append(r.sum())
    return per_tag, np.array(per_shard)


def fit_shards(shard_labels: Labels, num_classes: int, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(log tag weights, expected samples per shard per epoch) from the shards' labels (CSR
    pairs of usable rows). Each tag's step is damped by the most tags an image of it has,
    so a tag's image whose other tags move at once cannot overshoot."""
    counts, most, images = np.zeros(num_classes), np.ones(num_classes), 0
    for ptr, idx in shard_labels():
        counts += np.bincount(idx, minlength=num_classes)
        np.maximum.at(most, idx, np.repeat(np.diff(ptr), np.diff(ptr)))
        images += len(ptr) - 1
    present = counts > 0
    log_weight = np.where(present, -0.5 * np.log(np.maximum(counts, 1)), 0.0)
    target = np.sqrt(counts)
    bar = tqdm(total=ITERATIONS, desc="fit resampling", unit="pass", disable=not progress)
    for _ in range(ITERATIONS):
        got, per_shard = shares(shard_labels, log_weight)
        ratio = np.where(present, target / np.where(got > 0, got, 1), 1.0)
        bar.update()
        if np.abs(ratio - 1).max(initial=0) < TOLERANCE:
            break
        log_weight += np.log(ratio) / most
    bar.close()
    total = per_shard.sum()
    return log_weight, per_shard * (images / total) if total > 0 else per_shard


def fit(directory: str | Path, progress: bool = True) -> dict:
    """Fit the tag weights and each shard's share of an epoch; write DIR/resampling.table."""
    directory = Path(directory)
    manifest = shards.read_manifest(directory)
    paths = [directory / tables.table_file(e["file"]) for e in manifest["shards"]]
    log_weight, shard_weight = fit_shards(lambda: (tables.Table(p).usable_labels() for p in paths),
                                          manifest["num_classes"], progress)
    unusable = sum(int(np.count_nonzero(tables.Table(p).bad)) for p in paths)
    tables.write(directory / FILE, {"tag_log_weight": log_weight, "shard_weight": shard_weight},
                 fingerprint=shards.fingerprint(manifest), unusable=unusable)
    return {"images": int(round(shard_weight.sum()))}


def load(directory: Path, manifest: dict) -> tuple[dict, dict[str, np.ndarray]]:
    """(header, arrays) of the fit for this manifest's shards: `tag_log_weight`, and
    `shard_weight`, each shard's expected samples per epoch; the header counts the
    `unusable` rows of the whole set."""
    path = directory / FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory} has no {FILE} (shards from an older build): "
                                f"run `wsl data index {directory}`")
    header, arrays = tables.read(path)
    if header.get("fingerprint") != shards.fingerprint(manifest):
        raise ValueError(f"{path} was fitted to other shards than the manifest lists: "
                         f"run `wsl data index {directory}`")
    return header, arrays
