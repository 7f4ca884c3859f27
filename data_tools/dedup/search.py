"""The evaluation side in a FAISS index, every image as several views, and the
calibration of a descriptor's threshold on synthetic copies of the run's own images."""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

import faiss
import numpy as np
from faiss.contrib.ivf_tools import add_preassigned

from data_tools.dedup import copies, views

TRAIN_PER_CELL = 39  # FAISS warns below this many k-means training points per IVF cell
SHORTLIST_DEPTH = 32  # views searched per shortlisted image
# search.index=auto: exact search up to this many views (about 170 evaluation images).
# Searched as the scan does, a shard's queries at once, exact search is cheaper per
# training image below about 16k views, an inverted file above (2x at 65k, 4x at 262k:
# docs/benchmarks.md, "Web copies: the search at 92k").
FLAT_UP_TO = 16_384
PROBES = 16  # cells an automatic inverted file scans per query
OWN_SLOTS = 1  # shortlist places kept for the closest images of a training image's own view


@dataclass
class EvalImage:
    set_name: str
    key: str
    path: str
    shard: str


def index_plan(vectors: int, kind: str, nlist: int | None, nprobe: int | None) -> tuple[str, int, int]:
    """(kind, nlist, nprobe) of the index over `vectors` views. `auto`: exact search up to
    FLAT_UP_TO views, else an inverted file. A derived nlist is the power of two nearest
    4 * sqrt(vectors) with TRAIN_PER_CELL training points per cell: with PROBES cells
    scanned, the centroids and the scanned cells' views then cost about the same per
    query (sqrt(PROBES * vectors) minimises their sum). A given nlist or nprobe wins; an
    inverted file with too few views for its cells is exact search."""
    if kind == "auto":
        kind = "flat" if vectors <= FLAT_UP_TO else "ivf"
    if nlist is None:
        fits = max(1, vectors // TRAIN_PER_CELL)
        nlist = min(2 ** round(math.log2(4 * math.sqrt(max(1, vectors)))), 2 ** int(math.log2(fits)))
    if nprobe is None:
        nprobe = min(PROBES, nlist)
    if kind == "ivf" and vectors < TRAIN_PER_CELL * nlist:
        kind = "flat"
    return kind, nlist, nprobe


def make_index(dim: int, kind: str, nlist: int | None, nprobe: int | None, vectors: np.ndarray | list[np.ndarray]):
    """Exact inner-product search (`flat`), or an inverted file (`ivf`) that scans
    `nprobe` of `nlist` cells: milliseconds per query against millions of views; `auto`
    and unset nlist/nprobe as index_plan decides. A GPU index when faiss was built with
    GPU support and a GPU is present. A list of arrays (a shard's views each) is emptied
    as its parts are added: the build then holds the views about once, not three times
    (the parts, their concatenation, the index; bench/dedup_scale.py build)."""
    parts = vectors if isinstance(vectors, list) else [vectors]
    parts[:] = [part for part in parts if len(part)]
    total = sum(len(part) for part in parts)
    kind, nlist, nprobe = index_plan(total, kind, nlist, nprobe)
    if kind == "ivf":
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        # k-means on a fixed sample: as good cells as on all vectors, at a fraction of the time.
        sample = np.random.default_rng(0).choice(total, min(total, 64 * nlist), replace=False)
        index.train(_rows(parts, np.sort(sample)))
        index.nprobe = nprobe
    else:
        index = faiss.IndexFlatIP(dim)
    if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        index = faiss.index_cpu_to_all_gpus(index)
    _add(index, parts)
    return index


def _add(index, parts: list[np.ndarray]) -> None:
    """Adds the parts in order, dropping each once added. An inverted file's lists are
    sized for the first half of the views, then for all: grown a view at a time they
    ended at 1.6x the views (9.9 GiB for 6.2 at 92k evaluation images), and sized for all
    at once they were held beside all the views (12.6 GiB at the start); so the lists
    end about at the views' size, and the build peaks at 1.5x (bench/dedup_scale.py build)."""
    if not isinstance(index, faiss.IndexIVF):  # exact search, or an index on the GPU
        while parts:
            index.add(parts.pop(0))
        return
    cells = [index.quantizer.search(part, 1)[1].ravel() for part in parts]
    lists = faiss.downcast_InvertedLists(index.invlists)
    added = np.cumsum([len(c) for c in cells])
    half = int(np.searchsorted(added, added[-1] / 2)) + 1
    for stage in (half, len(cells) - half):
        if not stage:
            continue
        counts = np.bincount(np.concatenate(cells[:stage]), minlength=index.nlist)
        for cell in np.flatnonzero(counts).tolist():
            size = lists.list_size(cell)
            lists.resize(cell, size + int(counts[cell]))
            lists.resize(cell, size)   # the capacity stays: the stage's adds allocate nothing more
        for _ in range(stage):
            add_preassigned(index, parts.pop(0), cells.pop(0))


def _rows(parts: list[np.ndarray], rows: np.ndarray) -> np.ndarray:
    """Rows (sorted) of the parts' concatenation, without concatenating them."""
    starts = np.cumsum([0] + [len(part) for part in parts])
    part_of = np.searchsorted(starts, rows, side="right") - 1
    return np.concatenate([parts[j][rows[part_of == j] - starts[j]] for j in np.unique(part_of)])


class EvalIndex:
    """Views of the evaluation images; `owner[row]` is the image a view belongs to."""

    def __init__(self, descriptor, images: list[EvalImage], vectors: np.ndarray | list[np.ndarray], owner: np.ndarray,
                 kind: str = "flat", nlist: int | None = None, nprobe: int | None = None,
                 pixels: list | None = None, keypoints=None):
        self.descriptor = descriptor
        self.images = images
        self.owner = owner
        self.pixels = pixels  # per image, its framings for the alignment check (verify.pixels)
        self.keypoints = keypoints  # a keypoints.KeypointStore for local-feature verification
        self.views_per_image = int(np.bincount(owner).max()) if len(owner) else 0
        parts = vectors if isinstance(vectors, list) else [vectors]
        self.plan = index_plan(sum(len(p) for p in parts), kind, nlist, nprobe)  # (kind, nlist, nprobe) built
        self.index = make_index(parts[0].shape[1], *self.plan, parts)

    def best(self, queries: np.ndarray, counts: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Per training image (its `counts[i]` query views in a row), the best score and the
        evaluation image it belongs to."""
        if len(queries) == 0:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        scores, rows = self.index.search(queries, 1)
        scores, owners = scores[:, 0], self.owner[np.maximum(rows[:, 0], 0)]
        starts = np.cumsum([0] + list(counts[:-1]))
        pick = [start + int(np.argmax(scores[start:start + n])) for start, n in zip(starts, counts)]
        return scores[pick], owners[pick]

    def shortlist(self, queries: np.ndarray, counts: list[int], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Per training image, its `k` closest evaluation images (best view of any query
        view) and their scores, best first; -1 pads a short list. The OWN_SLOTS closest to
        the image's last view (the image itself, cut of any frame: views.query_views) keep
        a place: boxes and tiles cut from a copy's own scene can score unrelated originals
        above the real one, which its whole view still ranks first (bench/dedup.py, 300
        originals: combination in the list 0.897 -> 0.973, crop50 0.977 -> 0.997)."""
        n = len(counts)
        scores_out, owners_out = np.full((n, k), -1.0, np.float32), np.full((n, k), -1, np.int64)
        if len(queries) == 0:
            return scores_out, owners_out
        # Several views per image: enough neighbours that k distinct images are usually among them.
        scores, rows = self.index.search(queries, min(self.index.ntotal, SHORTLIST_DEPTH * k))
        owners = np.where(rows >= 0, self.owner[np.maximum(rows, 0)], -1)
        start = 0
        for i, count in enumerate(counts):
            s, o = scores[start:start + count], owners[start:start + count]
            start += count
            best = _distinct(s.ravel(), o.ravel())
            own = list(_distinct(s[-1], o[-1]))[:OWN_SLOTS]
            ranked = list(best)
            kept = ranked[:k]
            missing = [owner for owner in own if owner not in kept]
            if missing:
                kept = sorted(ranked[:k - len(missing)] + missing, key=best.get, reverse=True)
            for j, owner in enumerate(kept):
                owners_out[i, j], scores_out[i, j] = owner, best[owner]
        return scores_out, owners_out

    def calibrate(self, thumbnails: dict[int, object], seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Scores of synthetic copies against their own image (positives) and against the
        closest other image (negatives): what a threshold separates."""
        rng = random.Random(seed)
        ids = sorted(thumbnails)
        per_copy = [views.query_views(copies.random_copy(thumbnails[i], rng)) for i in ids]
        queries = self.descriptor.describe([view for group in per_copy for view in group])
        k = min(self.index.ntotal, self.views_per_image + 8)
        scores, rows = self.index.search(queries, k)
        owners = self.owner[np.maximum(rows, 0)]
        positive, negative, start = [], [], 0
        for i, group in zip(ids, per_copy):
            row_scores, row_ids, row_owners = (a[start:start + len(group)] for a in (scores, rows, owners))
            start += len(group)
            mine = row_owners == i
            positive.append(row_scores[mine].max() if mine.any() else -1.0)
            others = row_scores[~mine & (row_ids >= 0)]
            if len(others):
                negative.append(others.max())
        return np.asarray(positive, np.float32), np.asarray(negative, np.float32)


def _distinct(scores: np.ndarray, owners: np.ndarray) -> dict[int, float]:
    """Each evaluation image among the neighbours with its best score, best first."""
    order = np.argsort(-scores, kind="stable")
    ranked = owners[order]
    found, first = np.unique(ranked, return_index=True)
    at = np.sort(first[found >= 0])
    return dict(zip(ranked[at].tolist(), scores[order][at].tolist()))


def operating_point(positive: np.ndarray, negative: np.ndarray, threshold: float) -> dict:
    """Precision and recall of the calibration copies at `threshold`."""
    tp = int((positive >= threshold).sum())
    fp = int((negative >= threshold).sum())
    return {"precision": round(tp / (tp + fp), 4) if tp + fp else None,
            "recall": round(tp / len(positive), 4) if len(positive) else None,
            "copies": len(positive), "unrelated": len(negative)}


def choose_threshold(positive: np.ndarray, negative: np.ndarray, precision: float) -> float:
    """The lowest threshold whose calibration precision reaches `precision`: the most
    recall that precision allows."""
    candidates = np.unique(np.concatenate([positive, negative]))
    for tau in candidates:
        point = operating_point(positive, negative, float(tau))
        if point["precision"] is not None and point["precision"] >= precision:
            return float(tau)
    return float(np.nextafter(candidates.max(), np.float32(2))) if len(candidates) else 1.0
