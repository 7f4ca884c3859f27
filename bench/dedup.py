"""Benchmark the near-duplicate filter's default descriptor against a pHash baseline.

    python bench/dedup.py /work/shared/photos

From a folder of real photographs (none ship with the project): every other photo (sorted
by name) is an evaluation original; the training side holds, for each original, its
copies under each edit of data_tools.dedup.copies.EDITS (half size, JPEG q30, centre crop
80 %, h-flip, colour/brightness shift, black border, and half + crop 85 % + JPEG q40
combined), hidden among the other photos and all their edits (more distractors than
copies). Every image is stored as a JPEG (q95) and read back, as from a shard.

Prints, per edit, recall at precision >= 0.99 (best threshold per edit, and at the one
shipped threshold) for `dct` (what `wsl data dedup` runs: frame cut, indexed views,
FAISS inner product), the same with the alignment check (`verify.enabled=true`, at its
shipped threshold), and for plain pHash (imagehash, 64 bits, score 1 - hamming/64, one
hash per original); descriptors/s on one core; FAISS query time per image against
--vectors random indexed vectors, exact (flat) and IVF (1024 cells, 16 or 32 probed).
"""
from __future__ import annotations

import os

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")  # per-core figures

import argparse  # noqa: E402
import io  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import faiss  # noqa: E402
import imagehash  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from tqdm import tqdm  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from data_tools.dedup import copies, verify, views  # noqa: E402
from data_tools.dedup.run import VerifyConfig  # noqa: E402
from data_tools.dedup.descriptors import DCTDescriptor  # noqa: E402
from data_tools.dedup.search import EvalIndex, make_index  # noqa: E402

PRECISION = 0.99


def jpeg_bytes(im: Image.Image) -> bytes:
    out = io.BytesIO()
    im.save(out, format="JPEG", quality=95)
    return out.getvalue()


def labelled_set(folder: Path) -> tuple[list[bytes], list[bytes], list[str], np.ndarray]:
    """(eval originals, training images, each training image's edit, its original or -1)."""
    photos = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if len(photos) < 4:
        raise SystemExit(f"{folder}: need at least 4 photos, found {len(photos)}")
    originals, train, edits, truth = [], [], [], []
    for i, path in enumerate(tqdm(photos, desc="labelled set", unit="photo")):
        im = Image.open(path).convert("RGB")
        evaluation = i % 2 == 0
        if evaluation:
            originals.append(jpeg_bytes(im))
        else:
            train.append(jpeg_bytes(im))
            edits.append("original")
            truth.append(-1)
        for name, edit in copies.EDITS.items():
            train.append(jpeg_bytes(edit(im)))
            edits.append(name)
            truth.append(len(originals) - 1 if evaluation else -1)
    return originals, train, edits, np.asarray(truth)


def ours(originals: list[bytes], train: list[bytes]) -> tuple[np.ndarray, np.ndarray, float]:
    """Best score and original per training image, and training descriptors/s on one core."""
    descriptor = DCTDescriptor()
    vectors, owner = [], []
    for i, data in enumerate(originals):
        group = views.index_views(views.decode(data))
        vectors.append(descriptor.describe(group))
        owner += [i] * len(group)
    index = EvalIndex(descriptor, originals, np.concatenate(vectors), np.asarray(owner))
    # CPU time of this one process: the figure per core, also on a machine other jobs share.
    start = time.process_time()
    groups = [views.query_views(views.decode(data)) for data in train]
    queries = descriptor.describe([view for group in groups for view in group])
    rate = len(train) / (time.process_time() - start)
    scores, who = index.best(queries, [len(group) for group in groups])
    return scores, who, rate


def aligned(originals: list[bytes], train: list[bytes], scores: np.ndarray, who: np.ndarray) -> np.ndarray:
    """What `wsl data dedup` decides with the alignment check on (its default): pairs from
    `verify.candidates` aligned, the others never a match (-1)."""
    floor = VerifyConfig().candidates
    decoded: dict[int, list] = {}
    out = np.full(len(train), -1.0)
    for i in tqdm(np.flatnonzero(scores >= floor), desc="align candidate pairs", unit="pair"):
        if who[i] not in decoded:
            decoded[who[i]] = verify.pixels(views.framings(views.decode(originals[who[i]])))
        out[i] = verify.aligned_score(verify.pixels(views.framings(views.decode(train[i]))), decoded[who[i]])
    return out


def phash(originals: list[bytes], train: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    def bits(data: bytes) -> np.ndarray:
        return imagehash.phash(Image.open(io.BytesIO(data))).hash.flatten()

    index = np.stack([bits(d) for d in originals])
    scores, who = [], []
    for data in train:
        similarity = 1 - (index != bits(data)).mean(axis=1)
        who.append(int(similarity.argmax()))
        scores.append(float(similarity.max()))
    return np.asarray(scores), np.asarray(who)


def recall_at_precision(scores, who, truth, edits, edit: str, threshold: float | None = None):
    """(recall, precision, threshold): the best recall with precision >= PRECISION, or the
    operating point at `threshold`. A copy matched to the wrong original is a false match;
    every distractor above the threshold is one too."""
    mine = (edits == edit) & (truth >= 0)
    right = who[mine] == truth[mine]
    positives, negatives = scores[mine], scores[truth < 0]

    def point(tau):
        tp = int(((positives >= tau) & right).sum())
        fp = int((negatives >= tau).sum() + ((positives >= tau) & ~right).sum())
        return tp / len(positives), (tp / (tp + fp) if tp + fp else 1.0)

    if threshold is not None:
        return (*point(threshold), threshold)
    best = (0.0, 1.0, float("inf"))
    for tau in np.unique(np.concatenate([positives, negatives])):
        recall, precision = point(tau)
        if precision >= PRECISION and recall > best[0]:
            best = (recall, precision, float(tau))
    return best


def faiss_timing(count: int, dim: int, queries: int) -> dict:
    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((count, dim), dtype=np.float32)
    faiss.normalize_L2(x)
    # Near-duplicate queries: indexed vectors plus noise (cosine about 0.95).
    picked = rng.choice(count, queries, replace=False)
    q = (x[picked] + rng.standard_normal((queries, dim), dtype=np.float32) * (0.33 / np.sqrt(dim))).astype(np.float32)
    faiss.normalize_L2(q)
    out = {}
    for kind, nprobe in (("flat", 0), ("ivf", 16), ("ivf", 32)):
        start = time.perf_counter()
        index = make_index(dim, kind, 1024, nprobe, x)
        built = time.perf_counter() - start
        index.search(q[:50], 1)
        start, cpu = time.perf_counter(), time.process_time()
        _, rows = index.search(q, 1)
        out[kind + (f" nprobe={nprobe}" if nprobe else "")] = {
            "ms_per_query": (time.perf_counter() - start) / queries * 1e3,
            "cpu_ms_per_query": (time.process_time() - cpu) / queries * 1e3,
            "build_s": built, "found": float((rows[:, 0] == picked).mean())}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="a folder of real photographs")
    parser.add_argument("--vectors", type=int, default=1_000_000, help="indexed vectors for the FAISS timing")
    parser.add_argument("--queries", type=int, default=2000)
    args = parser.parse_args()
    if not args.folder.is_dir():
        raise SystemExit(f"{args.folder}: not a directory")

    originals, train, edits, truth = labelled_set(args.folder)
    edits = np.asarray(edits)
    copies_count, distractors = int((truth >= 0).sum()), int((truth < 0).sum())
    print(f"{len(originals)} evaluation originals; training side: {copies_count} copies among "
          f"{distractors} distractors")
    scores, who, rate = ours(originals, train)
    p_scores, p_who = phash(originals, train)
    a_scores = aligned(originals, train, scores, who)
    shipped, a_shipped = DCTDescriptor().threshold, VerifyConfig().threshold
    print(f"\n| edit | dct recall @ P>={PRECISION} | dct at shipped threshold {shipped} (recall / precision) "
          f"| dct + alignment at shipped {a_shipped} (recall / precision) | pHash recall @ P>={PRECISION} |")
    print("|---|---|---|---|---|")
    for edit in copies.EDITS:
        best = recall_at_precision(scores, who, truth, edits, edit)
        fixed = recall_at_precision(scores, who, truth, edits, edit, shipped)
        checked = recall_at_precision(a_scores, who, truth, edits, edit, a_shipped)
        base = recall_at_precision(p_scores, p_who, truth, edits, edit)
        print(f"| {edit} | {best[0]:.3f} (threshold {best[2]:.3f}) | {fixed[0]:.3f} / {fixed[1]:.3f} "
              f"| {checked[0]:.3f} / {checked[1]:.3f} | {base[0]:.3f} |")
    copy_aligned = a_scores[(truth >= 0) & (who == truth)]
    print(f"\nhighest distractor score: dct {scores[truth < 0].max():.4f}, aligned {a_scores[truth < 0].max():.4f}, "
          f"pHash {p_scores[truth < 0].max():.4f}; lowest aligned score of a copy: {copy_aligned.min():.4f}")
    print(f"descriptors/s per core (CPU time; decode from JPEG bytes, frame cut, describe): {rate:.0f}")
    timing = faiss_timing(args.vectors, DCTDescriptor().dim, args.queries)
    for kind, t in timing.items():
        print(f"FAISS {kind}: {t['cpu_ms_per_query']:.3f} ms CPU ({t['ms_per_query']:.3f} ms wall) per query, "
              f"one thread, against {args.vectors} vectors (dim {DCTDescriptor().dim}; built in "
              f"{t['build_s']:.1f} s; noisy copy of an indexed vector found: {t['found']:.3f})")


if __name__ == "__main__":
    main()
