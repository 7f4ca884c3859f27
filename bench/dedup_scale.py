"""Where the copy scan's time goes, and what the shortlist search costs and loses at scale.

    python bench/dedup_scale.py profile FOLDER [--photos 48] [--originals 100]
    python bench/dedup_scale.py crossover [--views 2000,4096,16384,65536] [--batch 100]
        [--single] [--vectors 200000]
    python bench/dedup_scale.py crowding FOLDER [--limit 60] [--filler 30]
        [--families combination,crop50,screenshot] [--plans flat,auto,ivf:2048:128]
    python bench/dedup_scale.py build [--eval-images 92000] [--per-shard 1000] [--concatenated]

`profile`: per training image, CPU ms of decoding, its query views (views.query_views
with the partial views; views.boxed_regions, which they call, apart), describing them,
and the shortlist search against --originals photos' index views (docs/benchmarks.md,
"Web copies, fourth pass (issue 19): speed of the local-feature scan").

`crossover`: exact search against the inverted file search.index=auto builds
(search.index_plan), on random unit vectors of the descriptor's 189 dims at each of
--views, ms of CPU per training image (32 query views, 256 neighbours each): --batch
training images per search, as the scan searches a shard, and with --single one image at
a time. Then where the 92k search's time goes: the coarse search over 16,384 centroids
(flat, or an HNSW quantizer), one image per call and batched, and the scanned cells, on
--vectors vectors with cells as large as at 92k (8.8M views, nlist 16,384) and at 96 and
64 dims ("Web copies: the search at 92k").

`crowding`: of bench/dedup.py's labelled set on the first --limit photos, the copies of
--families whose original is in their top-8 shortlist, with exact search and nothing else
indexed, then with --filler further photos and their copies under every family
(unrelated images) indexed too, for each of --plans (`kind` or `ivf:nlist:nprobe`).
--filler 0 compares the plans at the bench's own size.

`build`: the index search.index=auto builds over --eval-images evaluation images' views
(96 each; random unit vectors, --per-shard images' views per array as the scan's workers
return them), handed over as scan.build_index hands them (a list, which the build empties),
or with --concatenated as they were before (one concatenated copy beside the list): wall
time of the build on all cores, the process's peak memory above what it held before the
views, what the index holds after, and CPU ms of one training image's shortlist
(EvalIndex.shortlist, one thread, 100 images per call).

Machine time is CPU time of this one process, one thread (per-core figures).
"""
from __future__ import annotations

import os

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")  # per-core figures

import argparse  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import faiss  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from tqdm import tqdm  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dedup import (  # noqa: E402  (bench/dedup.py; puts the repo on the path)
    index_vectors,
    jpeg_bytes,
    labelled_set,
    photos_in,
    plan_name,
    query_vectors,
    unit_vectors,
)

from data_tools.dedup import copies, views  # noqa: E402
from data_tools.dedup.config import VerifyConfig  # noqa: E402
from data_tools.dedup.descriptors import DCTDescriptor  # noqa: E402
from data_tools.dedup.search import SHORTLIST_DEPTH, EvalIndex, index_plan, make_index  # noqa: E402

DIM = DCTDescriptor().dim
QUERY_VIEWS = 32     # query views per training image
SHORTLIST = VerifyConfig().shortlist
NEIGHBOURS = SHORTLIST_DEPTH * SHORTLIST   # per query view, as EvalIndex.shortlist asks
VIEWS_PER_IMAGE = 96                       # index views of an evaluation image (views.index_views)
FULL_VIEWS = 92_000 * VIEWS_PER_IMAGE      # 92k evaluation images
FULL_NLIST = index_plan(FULL_VIEWS, "auto", None, None)[1]


def cpu_ms(fn, items: list) -> tuple[float, list]:
    """CPU ms per item of fn over items, and its results."""
    start = time.process_time()
    out = [fn(x) for x in items]
    return (time.process_time() - start) / len(items) * 1e3, out


def profile(args) -> None:
    photos = photos_in(args.folder)
    if len(photos) < args.originals + args.photos:
        raise SystemExit(f"{args.folder}: need {args.originals + args.photos} photos, found {len(photos)}")
    read = lambda p: jpeg_bytes(Image.open(p).convert("RGB"))  # noqa: E731  (stored as a shard stores it)
    originals = [read(p) for p in tqdm(photos[:args.originals], desc="originals", unit="photo")]
    train = [read(p) for p in tqdm(photos[args.originals:args.originals + args.photos], desc="training", unit="photo")]
    descriptor = DCTDescriptor()
    decode_ms, images = cpu_ms(views.decode, train)
    views_ms, groups = cpu_ms(lambda im: views.query_views(im, partial=True), images)
    boxes_ms, _ = cpu_ms(views.boxed_regions, images)
    describe_ms, described = cpu_ms(descriptor.describe, groups)
    index = EvalIndex(descriptor, originals, *index_vectors(descriptor, tqdm(originals, desc="index views")))
    queries, counts = np.concatenate(described), [len(g) for g in groups]
    start = time.process_time()
    for _ in range(args.repeat):
        index.shortlist(queries, counts, SHORTLIST)
    search_ms = (time.process_time() - start) / args.repeat / len(train) * 1e3
    print(f"per training image, {len(train)} photos, CPU ms: decode {decode_ms:.2f} | query views {views_ms:.2f}"
          f" (boxed_regions {boxes_ms:.2f} of it) | describe {describe_ms:.2f} | shortlist search"
          f" {search_ms:.2f} ({len(originals)} originals, {plan_name(index.plan)})")


def near(rng, x: np.ndarray, n: int) -> np.ndarray:
    """n queries close to rows of x, as copies' views are to their originals'."""
    q = x[rng.choice(len(x), n, replace=n > len(x))] + 0.02 * rng.standard_normal((n, x.shape[1]), dtype=np.float32)
    faiss.normalize_L2(q)
    return q


def per_image_ms(index, queries: np.ndarray, images: int, batch: int, k: int = NEIGHBOURS) -> float:
    """CPU ms per training image searching `images` images' views, `batch` images per call."""
    index.search(queries[:QUERY_VIEWS], k)  # warm
    start = time.process_time()
    for i in range(0, images, batch):
        index.search(queries[i * QUERY_VIEWS:(i + batch) * QUERY_VIEWS], k)
    return (time.process_time() - start) / images * 1e3


def crossover(args) -> None:
    rng = np.random.default_rng(0)
    images = args.batch
    for n in args.views:
        x = unit_vectors(rng, n, DIM)
        q = near(rng, x, images * QUERY_VIEWS)
        plan = index_plan(n, "ivf", None, None)
        flat, ivf = make_index(DIM, "flat", None, None, x), make_index(DIM, *plan, x)
        row = (f"{n} views: {images} images per search: flat {per_image_ms(flat, q, images, images):.2f} ms"
               f" | ivf nlist={plan[1]} nprobe={plan[2]} {per_image_ms(ivf, q, images, images):.2f}")
        if args.single:
            row += (f" || one image per search: flat {per_image_ms(flat, q, images, 1):.2f}"
                    f" | ivf {per_image_ms(ivf, q, images, 1):.2f}")
        print(row + f"  (auto: {index_plan(n, 'auto', None, None)[0]})", flush=True)
    if args.vectors:
        parts(rng, args.vectors, args.batch)


def parts(rng, vectors: int, images: int) -> None:
    """The 92k search in two: the coarse search over FULL_NLIST centroids, and the cells
    scanned, of the size they have at 92k, on `vectors` random vectors."""
    nlist = round(FULL_NLIST * vectors / FULL_VIEWS)
    for dim in (DIM, 96, 64):
        q = unit_vectors(rng, images * QUERY_VIEWS, dim)
        centroids = unit_vectors(rng, FULL_NLIST, dim)
        coarse = [("flat", make_index(dim, "flat", None, None, centroids))]
        if dim == DIM:
            hnsw = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
            hnsw.add(centroids)
            hnsw.hnsw.efSearch = 64
            coarse.append(("hnsw M32 ef64", hnsw))
        line = [f"dim {dim}: coarse over {FULL_NLIST} centroids (16 nearest), ms per image"]
        for name, index in coarse:
            line.append(f"{name} {per_image_ms(index, q, images, 1, 16):.2f} one image per call,"
                        f" {per_image_ms(index, q, images, images, 16):.2f} {images} per call")
        x = unit_vectors(rng, vectors, dim)
        ivf = make_index(dim, "ivf", nlist, 16, x)
        small = make_index(dim, "flat", None, None, unit_vectors(rng, nlist, dim))
        total, own_coarse = per_image_ms(ivf, q, images, images), per_image_ms(small, q, images, images, 16)
        line.append(f"ivf nlist={nlist}/16 on {vectors} ({vectors // nlist} views per cell, as at 92k):"
                    f" {total:.2f} of which its coarse {own_coarse:.2f}, cells {total - own_coarse:.2f}")
        print(" | ".join(line), flush=True)


def plan_of(text: str) -> tuple[str, int | None, int | None]:
    kind, *rest = text.split(":")
    if kind not in ("flat", "ivf", "auto") or len(rest) not in (0, 2):
        raise SystemExit(f"--plans: {text!r} is not flat, auto, ivf or ivf:NLIST:NPROBE")
    return (kind, *(int(r) for r in rest)) if rest else (kind, None, None)


def filler_images(folder: Path, start: int, count: int) -> list[bytes]:
    """Photos past the labelled set and their copies under every family: images unrelated
    to any original, as most of a 92k evaluation side is to a given copy."""
    out = []
    for k, path in enumerate(tqdm(photos_in(folder)[start:start + count], desc="filler", unit="photo")):
        im = Image.open(path).convert("RGB")
        out.append(jpeg_bytes(im))
        for f, family in enumerate(copies.FAMILIES):
            out.append(jpeg_bytes(copies.web_copy(family, im, seed=10**6 + k * 100 + f, other=im.rotate(90, expand=True))))
    return out


def crowding(args) -> None:
    families = args.families.split(",") if args.families else list(copies.FAMILIES)
    if unknown := set(families) - set(copies.FAMILIES):
        raise SystemExit(f"--families: unknown {sorted(unknown)}; choose from {', '.join(copies.FAMILIES)}")
    plans = [plan_of(p) for p in args.plans.split(",")]
    originals, train, family_of, truth = labelled_set(args.folder, args.limit)
    family_of = np.asarray(family_of)
    chosen = np.flatnonzero((truth >= 0) & np.isin(family_of, families))
    descriptor = DCTDescriptor()
    queries, counts = query_vectors(descriptor, tqdm([train[i] for i in chosen], desc="query views", unit="image"))
    evaluation = originals + filler_images(args.folder, args.limit, args.filler)
    vectors, owner = index_vectors(descriptor, tqdm(evaluation, desc="index views", unit="image"))
    mine = owner < len(originals)
    _, alone = EvalIndex(descriptor, originals, vectors[mine], owner[mine]).shortlist(queries, counts, SHORTLIST)
    columns = {"flat, no filler": alone}
    cost = {"flat, no filler": ""}
    for plan in plans:
        index = EvalIndex(descriptor, evaluation, vectors, owner, *plan)
        start = time.process_time()
        _, who = index.shortlist(queries, counts, SHORTLIST)
        name = f"{'auto: ' if plan[0] == 'auto' else ''}{plan_name(index.plan)}, {args.filler} filler photos"
        columns[name] = who
        cost[name] = f"{(time.process_time() - start) / len(chosen) * 1e3:.1f} ms"
    print(f"{len(evaluation)} evaluation images, {len(vectors)} views; originals in the top {SHORTLIST}"
          f" (shortlist depth {SHORTLIST_DEPTH} views):")
    print("| family | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    right, fam = truth[chosen], family_of[chosen]
    for family in families:
        m = fam == family
        print(f"| {family} | " + " | ".join(str(int((w[m] == right[m, None]).any(1).sum())) for w in columns.values()) + " |")
    print(f"| all ({len(chosen)}) | " + " | ".join(str(int((w == right[:, None]).any(1).sum())) for w in columns.values()) + " |")
    print("| CPU per training image | " + " | ".join(cost.values()) + " |")


def rss_gib() -> float:
    """The process's resident memory now, GiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 2**20
    raise RuntimeError("no VmRSS in /proc/self/status")


def build(args) -> None:
    rng = np.random.default_rng(0)
    shards = [unit_vectors(rng, min(args.per_shard, args.eval_images - start) * VIEWS_PER_IMAGE, DIM)
              for start in tqdm(range(0, args.eval_images, args.per_shard), desc="views", unit="shard")]
    owner = np.repeat(np.arange(args.eval_images), VIEWS_PER_IMAGE)
    queries = near(rng, np.concatenate([s[:QUERY_VIEWS] for s in shards[:100]]), 100 * QUERY_VIEWS)
    held = sum(s.nbytes for s in shards) / 2**30
    before = rss_gib()
    vectors = [np.concatenate(shards)] if args.concatenated else shards
    faiss.omp_set_num_threads(os.cpu_count())
    start = time.perf_counter()
    index = EvalIndex(None, list(range(args.eval_images)), vectors, owner, "auto")
    built = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    del vectors, shards
    after = rss_gib()
    faiss.omp_set_num_threads(1)
    start = time.process_time()
    index.shortlist(queries, [QUERY_VIEWS] * 100, SHORTLIST)
    search_ms = (time.process_time() - start) / 100 * 1e3
    print(f"{args.eval_images} evaluation images, {len(owner)} views ({held:.2f} GiB as float32),"
          f" {'one concatenated copy' if args.concatenated else 'a list of shards'}: {plan_name(index.plan)} built"
          f" in {built:.0f} s on {os.cpu_count()} cores | peak {peak - before:.2f} GiB above the views"
          f" | index {after - before + held:.2f} GiB after | shortlist {search_ms:.1f} ms CPU per training image")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("profile", help="where a training image's scan time goes")
    p.add_argument("folder", type=Path)
    p.add_argument("--photos", type=int, default=48, help="training images timed")
    p.add_argument("--originals", type=int, default=100, help="evaluation images in the index")
    p.add_argument("--repeat", type=int, default=3, help="shortlist searches timed")
    p.set_defaults(run=profile)
    c = sub.add_parser("crossover", help="flat vs inverted file; where the 92k search's time goes")
    c.add_argument("--views", type=lambda s: [int(v) for v in s.split(",")], default=[2000, 4096, 16384, 65536],
                   help="index sizes (comma-separated)")
    c.add_argument("--batch", type=int, default=100, help="training images per search")
    c.add_argument("--single", action="store_true", help="also one training image per search")
    c.add_argument("--vectors", type=int, default=200_000,
                   help="vectors for the 92k parts (500000 in docs; 0 skips them)")
    c.set_defaults(run=crossover)
    w = sub.add_parser("crowding", help="originals kept in the shortlist with unrelated images indexed")
    w.add_argument("folder", type=Path)
    w.add_argument("--limit", type=int, default=60, help="photos of the labelled set (bench/dedup.py --limit)")
    w.add_argument("--filler", type=int, default=30, help="further photos indexed with their copies")
    w.add_argument("--families", default="combination,crop50,screenshot", help="comma-separated; empty: all")
    w.add_argument("--plans", default="flat,auto", help="comma-separated: flat, auto, ivf or ivf:NLIST:NPROBE")
    w.set_defaults(run=crowding)
    b = sub.add_parser("build", help="the index's build time and memory at the evaluation side's size")
    b.add_argument("--eval-images", type=int, default=92_000, help="evaluation images, 96 views each")
    b.add_argument("--per-shard", type=int, default=1000, help="evaluation images per array of views")
    b.add_argument("--concatenated", action="store_true", help="hand the views over concatenated, as before")
    b.set_defaults(run=build)
    args = parser.parse_args()
    faiss.omp_set_num_threads(1)
    args.run(args)


if __name__ == "__main__":
    main()
