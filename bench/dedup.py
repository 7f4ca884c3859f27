"""Benchmark the near-duplicate filter on the copies the web makes, against pHash.

    python bench/dedup.py /work/shared/photos [--limit 120] [--save scores.npz]
        [--index auto|flat|ivf] [--nlist N] [--nprobe M]

From a folder of real photographs (none ship with the project): every other photo (sorted
by name) is an evaluation original; the training side holds, for each original, its copy
under each family of data_tools.dedup.copies.FAMILIES (downscale to a third, JPEG q20,
off-centre crop to half the area, mirror, strong colour/contrast, grey, rotation by
5-15 degrees in the canvas and on a grown one, aspect 0.7, uneven coloured padding, blur
radius 3, pixelization 1/10, text across the middle, meme captions, two stickers, pasted
at 60 % into another photo, a screenshot of a social-media post, and flip + crop + grey +
text + JPEG combined), and as distractors the other photos and the same families applied
to them (so an edit alone cannot match). Every image is stored as a JPEG (q95) and read
back, as from a shard.

Prints, per family, the recall at the shipped settings of: `dct` alone
(`verify.method=off`), `dct` + the alignment check (`verify.method=align`), pHash
(imagehash, 64 bits, one hash per original, at its best threshold with precision >= 0.99
over all matches), and the shortlist + SIFT verification (`verify.method=local`, what
`wsl data dedup` runs by default); the precision of each over all matches; per family,
the share of copies whose original is in the shortlist with the index `--index` builds
(search.index_plan; `auto`, the default, is exact search up to search.FLAT_UP_TO views)
beside exact search's; the grid the verification's thresholds were chosen on; the share of images verified, verification cost, the scan rate against pHash
hashing (CPU time of this one process, at 5 % copies), the verification data per
evaluation image; FAISS query time per image against --vectors random vectors; one
training image's shortlist search against --eval-images (92k) evaluation images' views
(random vectors, 100 training images per search as the scan searches a shard; flat,
inverted files, and the one search.index=auto builds there) and the scan's ratio to
pHash with it.
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

import cv2  # noqa: E402
import faiss  # noqa: E402
import imagehash  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from tqdm import tqdm  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from data_tools.dedup import copies, keypoints, verify, views  # noqa: E402
from data_tools.dedup.config import VerifyConfig  # noqa: E402
from data_tools.dedup.descriptors import DCT_THRESHOLD, DCTDescriptor  # noqa: E402
from data_tools.dedup.search import SHORTLIST_DEPTH, EvalIndex, index_plan, make_index  # noqa: E402
from data_tools.dedup.verify import ALIGN_THRESHOLD  # noqa: E402

PRECISION = 0.99
# OpenCV's own thread pool off, as the scan has it (scan.scan, threads.pool_worker), which
# runs an image per core: at its default SIFT took 13.6 ms of CPU per photo, 9.2 without.
cv2.setNumThreads(1)


def jpeg_bytes(im: Image.Image) -> bytes:
    out = io.BytesIO()
    im.save(out, format="JPEG", quality=95)
    return out.getvalue()


def photos_in(folder: Path) -> list[Path]:
    """The folder's photographs, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


def unit_vectors(rng, n: int, dim: int) -> np.ndarray:
    """n random unit vectors: stand-ins for descriptors where only the search's cost counts."""
    x = rng.standard_normal((n, dim), dtype=np.float32)
    faiss.normalize_L2(x)
    return x


def plan_name(plan: tuple[str, int, int]) -> str:
    """An index as search.index_plan gives it: "flat" or "ivf nlist=N nprobe=M"."""
    kind, nlist, nprobe = plan
    return kind if kind == "flat" else f"{kind} nlist={nlist} nprobe={nprobe}"


def index_vectors(descriptor, originals: list[bytes], shortlist: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The evaluation images' views as the scan indexes them, and each view's image."""
    vectors, owner = [], []
    for i, data in enumerate(originals):
        group = views.index_views(views.decode(data), shortlist=shortlist)
        vectors.append(descriptor.describe(group))
        owner += [i] * len(group)
    return np.concatenate(vectors), np.asarray(owner)


def query_vectors(descriptor, train: list[bytes], partial: bool = True) -> tuple[np.ndarray, list[int]]:
    """The training images' query views as the scan describes them, and how many each has."""
    queries, counts = [], []
    for data in train:  # one image's views at a time: all of them at once would not fit in memory
        group = views.query_views(views.decode(data), partial=partial)
        queries.append(descriptor.describe(group))
        counts.append(len(group))
    return np.concatenate(queries), counts


def labelled_set(folder: Path, limit: int | None = None) -> tuple[list[bytes], list[bytes], list[str], np.ndarray]:
    """(eval originals, training images, each training image's family, its original or -1).
    Every other photo is an original; each original and each other photo goes through
    every family of copies.FAMILIES (the paste family into one of the other photos,
    never an original), so the edits themselves are among the distractors. `limit`: the
    first that many photos only (a quick run while iterating)."""
    photos = photos_in(folder)[:limit]
    if len(photos) < 4:
        raise SystemExit(f"{folder}: need at least 4 photos, found {len(photos)}")
    loaded = [Image.open(path).convert("RGB") for path in tqdm(photos, desc="read photos", unit="photo")]
    others = loaded[1::2]
    originals, train, families, truth = [], [], [], []
    for i, im in enumerate(tqdm(loaded, desc="labelled set", unit="photo")):
        evaluation = i % 2 == 0
        if evaluation:
            originals.append(jpeg_bytes(im))
        else:
            train.append(jpeg_bytes(im))
            families.append("original")
            truth.append(-1)
        for f, family in enumerate(copies.FAMILIES):
            backdrop = others[(i // 2 + 1 + f) % len(others)]   # never the photo itself
            train.append(jpeg_bytes(copies.web_copy(family, im, seed=i * 100 + f, other=backdrop)))
            families.append(family)
            truth.append(len(originals) - 1 if evaluation else -1)
    return originals, train, families, np.asarray(truth)


def global_scores(originals: list[bytes], train: list[bytes], shortlist: int = 0,
                  searches=(("flat", None, None),)):
    """What the global descriptor finds: per training image its best score and original,
    and training images/s (decode, views, describe, the first search) in CPU time of this
    one process. With `shortlist` k, as local-feature verification's scan does: its views
    (views.shortlist_views, views.partial_views) and its one search, for each training
    image's top-k shortlist (scores, originals) instead. One (scores, originals) per
    index of `searches` (search.index, nlist, nprobe), all on the same query views."""
    descriptor = DCTDescriptor()
    vectors, owner = index_vectors(descriptor, originals, shortlist > 0)
    indexes = [EvalIndex(descriptor, originals, vectors, owner, *s) for s in searches]
    start = time.process_time()
    queries, counts = query_vectors(descriptor, train, shortlist > 0)
    found, rate = [], 0.0
    for index in indexes:
        found.append(index.shortlist(queries, counts, shortlist) if shortlist else index.best(queries, counts))
        rate = rate or len(train) / (time.process_time() - start)
    return found, rate, [index.plan for index in indexes]


def in_shortlist(short_who: np.ndarray, truth: np.ndarray, families: np.ndarray, family: str) -> float:
    """The share of the family's copies whose original is among their shortlisted images."""
    mine = (families == family) & (truth >= 0)
    return float((short_who[mine] == truth[mine, None]).any(axis=1).mean())


def aligned(originals: list[bytes], train: list[bytes], scores: np.ndarray, who: np.ndarray) -> np.ndarray:
    """What `wsl data dedup` decides with the alignment check on (the demo's setting):
    pairs from `verify.candidates` aligned, the others never a match (-1)."""
    floor = VerifyConfig().candidates
    decoded: dict[int, list] = {}
    out = np.full(len(train), -1.0)
    for i in tqdm(np.flatnonzero(scores >= floor), desc="align candidate pairs", unit="pair"):
        if who[i] not in decoded:
            decoded[who[i]] = verify.pixels(views.framings(views.decode(originals[who[i]])))
        out[i] = verify.aligned_score(verify.pixels(views.framings(views.decode(train[i]))), decoded[who[i]])
    return out


def local_matches(originals: list[bytes], train: list[bytes], short_scores: np.ndarray, short_who: np.ndarray,
                  floor: float, screen: int):
    """SIFT verification of every shortlisted pair with a global score from `floor`:
    inliers and cover per (training image, shortlist slot), 0 where not verified; which
    training images the cheap first look (keypoints.screened_out at `screen`) rejects
    (verified all the same, so the bench shows what the screen loses); and the CPU
    seconds of the evaluation side's keypoints, of the screen per image, of a training
    image's keypoints, and of one pair's matching."""
    start = time.process_time()
    eval_side = [keypoints.features(views.decode(data, keypoints.SIDE)) for data in originals]
    eval_s = (time.process_time() - start) / len(originals)
    inliers = np.zeros(short_who.shape, np.int32)
    cover = np.zeros(short_who.shape, np.float32)
    screened = np.zeros(len(train), bool)
    screen_s = query_s = pair_s = 0.0
    pairs = 0
    for i in tqdm(range(len(train)), desc="verify shortlisted pairs", unit="img"):
        slots = [j for j in range(short_who.shape[1]) if short_who[i, j] >= 0 and short_scores[i, j] >= floor]
        if not slots:
            continue
        candidates = [eval_side[short_who[i, j]] for j in slots]
        im = views.decode(train[i])   # the scan decoded it for its views: counted in its rate
        t0 = time.process_time()
        screened[i] = keypoints.screened_out(keypoints.screen_pixels(im), candidates, screen)
        t1 = time.process_time()
        query = keypoints.query_features(views.decode(train[i], keypoints.SIDE))
        t2 = time.process_time()
        for j, found in zip(slots, keypoints.match_all(query, candidates)):
            inliers[i, j], cover[i, j] = found["inliers"], found["cover"]
        screen_s += t1 - t0
        query_s += t2 - t1
        pair_s += time.process_time() - t2
        pairs += len(slots)
    verified = int((short_scores[:, 0] >= floor).sum())
    return (inliers, cover, screened, eval_s, screen_s / max(1, verified), query_s / max(1, verified),
            pair_s / max(1, pairs), pairs)


def decide(short_scores, short_who, inliers, cover, floor, certain, min_inliers, min_cover):
    """The local-feature filter's decision per training image: (match score, original).
    A pair with a global score from `certain` is a copy without verification; else the
    shortlisted original whose verification passes with the most inliers; score 1 for a
    match, else -1."""
    ok = (inliers >= min_inliers) & (cover >= min_cover) & (short_scores >= floor)
    ranked = np.where(ok, inliers, -1)
    slot = ranked.argmax(axis=1)
    rows = np.arange(len(short_who))
    matched = ranked[rows, slot] >= 0
    who = np.where(matched, short_who[rows, slot], short_who[:, 0])
    sure = short_scores[:, 0] >= certain
    who = np.where(sure, short_who[:, 0], who)
    return np.where(matched | sure, 1.0, -1.0), who


def calibration_grid(short_scores, short_who, inliers, cover, truth, families, shipped) -> list[str]:
    """Precision over all matches and the lowest per-family recall for each inlier and cover
    threshold around the shipped ones (floor and certain as shipped): how they were chosen."""
    lines = ["| min_inliers | min_cover | precision | lowest family recall (family) | combination |", "|---|---|---|---|---|"]
    for min_inliers in (6, 7, 8, 10, 12, 15):
        for min_cover in (0.0, 0.02, 0.05, 0.1):
            scores, who = decide(short_scores, short_who, inliers, cover, shipped.floor, shipped.certain,
                                 min_inliers, min_cover)
            precision = operating_point(scores, who, truth, 0.0)[0]
            per = {f: recall(scores, who, truth, families, f, 0.0) for f in copies.FAMILIES}
            worst = min(per, key=per.get)
            lines.append(f"| {min_inliers} | {min_cover} | {precision:.4f} | {per[worst]:.3f} ({worst}) "
                         f"| {per['combination']:.3f} |")
    return lines


def phash(originals: list[bytes], train: list[bytes]) -> tuple[np.ndarray, np.ndarray, float]:
    """pHash (64 bits) best score 1 - hamming/64 and original per training image, and
    the hashing rate (decode + hash, training images/s, CPU time of this process)."""
    def bits(data: bytes) -> np.ndarray:
        return imagehash.phash(Image.open(io.BytesIO(data))).hash.flatten()

    index = np.stack([bits(d) for d in originals])
    start = time.process_time()
    hashes = [bits(data) for data in train]
    rate = len(train) / (time.process_time() - start)
    similarity = 1 - (np.stack(hashes)[:, None, :] != index[None]).mean(axis=2)
    return similarity.max(axis=1), similarity.argmax(axis=1), rate


def operating_point(scores, who, truth, threshold: float) -> tuple[float, int, int]:
    """(precision, true, false matches) over every training image at `threshold`: a copy
    matched to the wrong original is a false match, every distractor above it is one."""
    hit = scores >= threshold
    tp = int((hit & (truth >= 0) & (who == truth)).sum())
    fp = int(hit.sum()) - tp
    return (tp / (tp + fp) if tp + fp else 1.0), tp, fp


def recall(scores, who, truth, families, family: str, threshold: float) -> float:
    mine = (families == family) & (truth >= 0)
    return float(((scores[mine] >= threshold) & (who[mine] == truth[mine])).mean())


def best_threshold(scores, who, truth) -> float:
    """The lowest threshold with precision >= PRECISION over all matches (pHash has no
    shipped one: it gets its best)."""
    for tau in np.unique(scores):
        if operating_point(scores, who, truth, tau)[0] >= PRECISION:
            return float(tau)
    return float("inf")


def faiss_timing(count: int, dim: int, queries: int) -> dict:
    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(0)
    x = unit_vectors(rng, count, dim)
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


def shortlist_search_timing(images: int, per_image: int, query_views: int, k: int, nlists=(1024, 16384),
                            probes=(16, 32), built: int = 500_000, batch: int = 100) -> dict:
    """CPU ms of one training image's shortlist search (`query_views` views, each for
    search.SHORTLIST_DEPTH * `k` neighbours, as EvalIndex.shortlist asks) against
    `images` x `per_image` views (random unit vectors), one thread, `batch` training
    images per search as the scan searches a shard's at once (FAISS's coarse search is a
    matrix product from a few thousand queries on). Measured on `built` vectors, scaled:
    an IVF index scans `nprobe` cells of (vectors / nlist) each, so one over a share of
    the vectors with that share of the cells scans as many per query; its coarse search
    (nprobe of nlist centroids) is measured at the full nlist and replaces the small
    one's. Flat (exact) search grows with the vectors."""
    faiss.omp_set_num_threads(1)
    dim, total = DCTDescriptor().dim, images * per_image
    share = min(1.0, built / total)
    rng = np.random.default_rng(0)
    x = unit_vectors(rng, round(total * share), dim)
    q = x[rng.choice(len(x), batch * query_views, replace=False)]
    q = (q + rng.standard_normal(q.shape, dtype=np.float32) * (0.33 / np.sqrt(dim))).astype(np.float32)
    faiss.normalize_L2(q)

    def per_image_ms(index, count: int, depth: int) -> float:
        start = time.process_time()
        index.search(q[:count * query_views], depth)
        return (time.process_time() - start) / count * 1e3

    out = {"flat": per_image_ms(make_index(dim, "flat", None, None, x), batch, SHORTLIST_DEPTH * k) / share}
    for nlist in nlists:
        small = max(1, round(nlist * share))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, small, faiss.METRIC_INNER_PRODUCT)
        index.train(x[:min(len(x), 64 * small)])
        index.add(x)
        coarse = {n: make_index(dim, "flat", None, None, unit_vectors(rng, n, dim)) for n in (small, nlist)}
        for nprobe in probes:
            index.nprobe = nprobe
            ms = per_image_ms(index, batch, SHORTLIST_DEPTH * k)
            ms += per_image_ms(coarse[nlist], batch, nprobe) - per_image_ms(coarse[small], batch, nprobe)
            out[f"ivf nlist={nlist} nprobe={nprobe}"] = ms
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="a folder of real photographs")
    parser.add_argument("--vectors", type=int, default=1_000_000, help="indexed vectors for the FAISS timing")
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--floor", type=float, default=0.0, help="verify shortlisted pairs from this global "
                        "score (the calibration grid below starts here)")
    parser.add_argument("--limit", type=int, help="the first this many photos only (quick runs while iterating)")
    parser.add_argument("--save", type=Path, help="keep the per-image scores here (.npz)")
    parser.add_argument("--screen", type=int, default=keypoints.SCREEN_INLIERS,
                        help="the opt-in screen's inliers (verify.screen) measured beside the shipped settings")
    parser.add_argument("--index", choices=("auto", "flat", "ivf"), default="auto",
                        help="search.index of the shortlist's search (its recall is printed beside exact search's)")
    parser.add_argument("--nlist", type=int, help="search.nlist (default: derived, search.index_plan)")
    parser.add_argument("--nprobe", type=int, help="search.nprobe (default: search.PROBES)")
    parser.add_argument("--eval-images", type=int, default=92_000, help="evaluation images for the timing of "
                        "the shortlist search at scale (their views random vectors; 0: skip)")
    args = parser.parse_args()
    if not args.folder.is_dir():
        raise SystemExit(f"{args.folder}: not a directory")
    shipped = VerifyConfig()

    originals, train, families, truth = labelled_set(args.folder, args.limit)
    families = np.asarray(families)
    copies_count, distractors = int((truth >= 0).sum()), int((truth < 0).sum())
    print(f"{len(originals)} evaluation originals; training side: {copies_count} copies among "
          f"{distractors} distractors (the same families applied to other photos)")
    ((scores, who),), rate, _ = global_scores(originals, train)
    search = (args.index, args.nlist, args.nprobe)
    found, short_rate, plans = global_scores(originals, train, shipped.shortlist, (search, ("flat", None, None)))
    (short_scores, short_who), (_, flat_who) = found
    plan = plan_name(plans[0])
    print(f"\nshortlist search: search.index={args.index} builds {plan} over {len(originals)} originals' views")
    print(f"| family | original in the shortlist, {plan} | exact (flat) |\n|---|---|---|")
    for family in copies.FAMILIES:
        print(f"| {family} | {in_shortlist(short_who, truth, families, family):.4f} | "
              f"{in_shortlist(flat_who, truth, families, family):.4f} |")
    p_scores, p_who, p_rate = phash(originals, train)
    a_scores = aligned(originals, train, scores, who)
    inliers, cover, screened, eval_s, screen_s, query_s, pair_s, pairs = local_matches(
        originals, train, short_scores, short_who, args.floor, args.screen)
    if args.save:
        np.savez(args.save, scores=scores, who=who, short_scores=short_scores, short_who=short_who,
                 p_scores=p_scores, p_who=p_who, a_scores=a_scores, inliers=inliers, cover=cover,
                 screened=screened, truth=truth, families=families)
    u_scores, u_who = decide(short_scores, short_who, inliers, cover, shipped.floor, shipped.certain,
                             shipped.min_inliers, shipped.min_cover)
    # what the scan does with verify.screen: a screened-out image is not verified
    l_scores, l_who = decide(short_scores, short_who, np.where(screened[:, None], 0, inliers), cover,
                             shipped.floor, shipped.certain, shipped.min_inliers, shipped.min_cover)
    p_tau = best_threshold(p_scores, p_who, truth)
    columns = {f"dct at {DCT_THRESHOLD}": (scores, who, DCT_THRESHOLD),
               f"dct + alignment at {ALIGN_THRESHOLD}": (a_scores, who, ALIGN_THRESHOLD),
               f"pHash at its best {p_tau:.3f}": (p_scores, p_who, p_tau),
               "shortlist + SIFT (shipped)": (u_scores, u_who, 0.0),
               f"same, screen at {args.screen}": (l_scores, l_who, 0.0)}
    print("\n| family | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for family in copies.FAMILIES:
        print(f"| {family} | " + " | ".join(f"{recall(s, w, truth, families, family, t):.3f}"
                                           for s, w, t in columns.values()) + " |")
    print("| **precision, all matches** | " + " | ".join(
        "{:.4f} ({} true, {} false)".format(*operating_point(s, w, truth, t)) for s, w, t in columns.values()) + " |")
    print("\n" + "\n".join(calibration_grid(short_scores, short_who, inliers, cover, truth, families, shipped)))
    floor = short_scores[:, 0] >= shipped.floor
    verified_copy, verified_other = float(floor[truth >= 0].mean()), float(floor[truth < 0].mean())
    passed_copy = float((floor & ~screened)[truth >= 0].mean())
    passed_other = float((floor & ~screened)[truth < 0].mean())
    share, passed = 0.05 * verified_copy + 0.95 * verified_other, 0.05 * passed_copy + 0.95 * passed_other
    full = query_s + pair_s * pairs / max(1, int((short_scores[:, 0] >= args.floor).sum()))
    per_image = 1 / short_rate + share * screen_s + passed * full
    print(f"\nshare of training images verified from floor {shipped.floor}: copies {verified_copy:.3f}, "
          f"distractors {verified_other:.3f}; at 5 % copies {share:.3f}; past the screen at "
          f"{args.screen} inliers: copies {passed_copy:.3f}, distractors {passed_other:.3f}, at 5 % copies "
          f"{passed:.3f}")
    print(f"CPU ms: evaluation image keypoints {eval_s * 1e3:.1f} (once); screen per training image "
          f"{screen_s * 1e3:.1f}; training image keypoints, both mirrors {query_s * 1e3:.1f}; per shortlisted "
          f"pair {pair_s * 1e3:.2f} ({pairs} pairs verified from global score {args.floor})")
    print(f"scan rate, images/s per core: global descriptor {rate:.0f}, with the shortlist's views "
          f"{short_rate:.0f}; with verification at 5 % copies {1 / (1 / short_rate + share * full):.0f} without "
          f"the screen, {1 / per_image:.0f} with it; pHash hashing {p_rate:.0f}; ratio "
          f"{1 / (1 / short_rate + share * full) / p_rate:.2f} without the screen, {1 / per_image / p_rate:.2f} with it")
    if args.eval_images:
        # The scan's search above ran against this run's few hundred originals; at the
        # evaluation side's real size the shortlist search is a cost of its own.
        indexed = np.mean([len(views.index_views(views.decode(d), shortlist=True)) for d in originals[:50]])
        queried = np.mean([len(views.query_views(views.decode(d), partial=True)) for d in train[:200]])
        plan = index_plan(args.eval_images * round(indexed), "auto", None, None)
        _, nlist, nprobe = plan
        default = plan_name(plan)
        found = shortlist_search_timing(args.eval_images, round(indexed), round(queried), shipped.shortlist,
                                        nlists=sorted({1024, nlist}), probes=sorted({nprobe, 32}))
        for kind, ms in found.items():
            kind += " (the default: search.index=auto)" if kind == default else ""
            print(f"shortlist search at {args.eval_images} evaluation images x {indexed:.0f} views, {kind}: "
                  f"{ms:.1f} ms CPU per training image ({queried:.0f} query views, "
                  f"{SHORTLIST_DEPTH * shipped.shortlist} neighbours each, one thread); the scan with it: "
                  f"ratio to pHash {1 / (1 / short_rate + share * full + ms / 1e3) / p_rate:.3f} without the "
                  f"screen, {1 / (per_image + ms / 1e3) / p_rate:.3f} with it")
    per = keypoints.KeypointStore.bytes_per_image()
    print(f"verification data per evaluation image: {per} bytes on disk (memory-mapped); at 92k images "
          f"{per * 92_000 / 2**30:.2f} GiB")
    timing = faiss_timing(args.vectors, DCTDescriptor().dim, args.queries)
    for kind, t in timing.items():
        print(f"FAISS {kind}: {t['cpu_ms_per_query']:.3f} ms CPU ({t['ms_per_query']:.3f} ms wall) per query, "
              f"one thread, against {args.vectors} vectors (dim {DCTDescriptor().dim}; built in "
              f"{t['build_s']:.1f} s; noisy copy of an indexed vector found: {t['found']:.3f})")


if __name__ == "__main__":
    main()
