"""The paper's square-root resampling, exact on multi-tag images: fitted once per shard set.

Goal: in the resampled stream, each tag's share (its occurrences among all labels drawn)
goes as sqrt(its image count). Giving an image the mean of 1/sqrt(count) over its tags is
exact only for one-tag images; with 2-3 tags the frequent tags' co-occurrences lift their
share (measured exponent 0.68-0.75 instead of 0.5). Here each tag t gets a weight w_t, an
image's rate is the mean of its tags' weights, and the weights solve

    sum over images i carrying t of rate_i = sqrt(count_t)    for every tag t,

a linear system M w = sqrt(count) with M[t, u] = sum over images carrying t and u of
1/(tags of the image): V×V and sparse, so one pass over the sample tables builds it and
the fit itself never touches the images again. A second pass sums the rates per shard,
which is all a loader's plan needs: a shard's share of the epoch (resampling.table).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp
from tqdm import tqdm

from data_tools import shards, tables

FILE = "resampling.table"
ITERATIONS = 2000
TOLERANCE = 1e-6  # largest relative error of any tag's share


def cooccurrence(ptr: np.ndarray, idx: np.ndarray, num_classes: int) -> sp.csr_matrix:
    """M's contribution of one set of rows (labels in CSR form, every row usable)."""
    lengths = np.diff(ptr)
    rows = np.repeat(np.arange(len(lengths)), lengths)
    incidence = sp.csr_matrix((np.repeat(1.0 / np.sqrt(np.maximum(lengths, 1)), lengths), (rows, idx)),
                              shape=(len(lengths), num_classes))
    return (incidence.T @ incidence).tocsr()


def solve(m: sp.csr_matrix, counts: np.ndarray) -> np.ndarray:
    """Non-negative w with M w = sqrt(counts), by multiplicative updates from the one-tag
    solution 1/sqrt(count); damped (square root of the ratio) so it cannot oscillate."""
    target = np.sqrt(counts)
    present = counts > 0
    w = np.where(present, 1.0 / np.sqrt(np.maximum(counts, 1)), 0.0)
    for _ in range(ITERATIONS):
        got = m @ w
        ratio = np.where(present, target / np.where(got > 0, got, 1), 1.0)
        if np.abs(ratio[present] - 1).max(initial=0) < TOLERANCE:
            break
        w *= np.sqrt(ratio)
    return w


def usable(table: tables.Table) -> tuple[np.ndarray, np.ndarray]:
    """The labels (CSR) of a table's usable rows."""
    ok = table.bad == 0
    lengths = np.diff(table.label_ptr)[ok]
    keep = np.repeat(ok, np.diff(table.label_ptr))
    return np.concatenate([[0], np.cumsum(lengths)]), np.asarray(table.label_idx[keep], np.int64)


def fit(directory: str | Path, progress: bool = True) -> dict:
    """Fit the tag weights and each shard's share of an epoch; write DIR/resampling.table."""
    directory = Path(directory)
    manifest = shards.read_manifest(directory)
    k = manifest["num_classes"]
    files = [directory / tables.table_file(e["file"]) for e in manifest["shards"]]
    m, counts, images = sp.csr_matrix((k, k)), np.zeros(k), 0
    for path in tqdm(files, desc="fit resampling", unit="shard", disable=not progress):
        ptr, idx = usable(tables.Table(path))
        m = m + cooccurrence(ptr, idx, k)
        counts += np.bincount(idx, minlength=k)
        images += len(ptr) - 1
    w = solve(m, counts)
    rate_sums = np.array([tables.Table(p).mean_over_labels(w).sum() for p in files])
    total = rate_sums.sum()
    shard_weight = rate_sums * (images / total) if total > 0 else rate_sums
    tables.write(directory / FILE, {"tag_weight": w, "shard_weight": shard_weight},
                 fingerprint=shards.fingerprint(manifest))
    return {"tags": int((counts > 0).sum()), "images": images}


def load(directory: Path, manifest: dict) -> tuple[np.ndarray, np.ndarray]:
    """(tag weights, expected samples per shard per epoch) for this manifest's shards."""
    path = directory / FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory} has no {FILE} (shards from an older build): "
                                f"run `wsl data index {directory}`")
    header, arrays = tables.read(path)
    if header.get("fingerprint") != shards.fingerprint(manifest):
        raise ValueError(f"{path} was fitted to other shards than the manifest lists: "
                         f"run `wsl data index {directory}`")
    return np.asarray(arrays["tag_weight"]), np.asarray(arrays["shard_weight"])
