"""The index of the evaluation side, its threshold, and the scan of the training shards:
each training image's closest evaluation image, with the second look (alignment or
local features) at candidate pairs; one result file per shard under OUT/.dedup/shards."""
from __future__ import annotations

import json
import tarfile
import zlib
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from data_tools.common.log import say
from data_tools.common.threads import cores, pool_worker
from data_tools.dedup import keypoints, views
from data_tools.dedup.config import DedupConfig, DescriptorConfig, VerifyConfig
from data_tools.dedup.descriptors import make_descriptor
from data_tools.dedup.search import EvalImage, EvalIndex, choose_threshold, index_plan, operating_point
from data_tools.dedup.sets import ShardSet
from data_tools.dedup.verify import aligned_score, pixels
from data_tools.format import shards

BATCH = 256          # images described per call


_DESCRIPTORS: dict[str, object] = {}


def cached_descriptor(desc_cfg: DescriptorConfig, read_backbone=None):
    """One descriptor per process and config: a network is loaded once, not per shard
    (`read_backbone` as descriptors.load_network's)."""
    key = json.dumps(asdict(desc_cfg), sort_keys=True)
    if key not in _DESCRIPTORS:
        _DESCRIPTORS[key] = make_descriptor(desc_cfg, read_backbone)
    return _DESCRIPTORS[key]


def describe_shard(tar: str, desc_cfg: DescriptorConfig, index_side: bool, sample_every: int = 0,
                   verify: str = "off", screen: bool = False) -> dict:
    """Worker: every sample of one shard decoded and described (the query views, or all
    the index views), undecodable images counted; the thumbnails of about one in
    `sample_every` images come back for calibration. With `verify` "align", every
    image's small pixels for aligning candidate pairs; with "local", the shortlist's
    views and, on the index side, every image's keypoints; with `screen` too, on the
    training side, what the screen looks at (keypoints.screen_pixels of the image
    decoded here: the screen pays no second decode)."""
    descriptor = cached_descriptor(desc_cfg)
    keys, paths, images, bad, local = [], [], [], [], []
    try:
        for key, files in shards.iter_samples(Path(tar)):
            try:
                im = views.decode(files.get("jpg", b""))
                if verify == "local" and index_side:
                    local.append(keypoints.features(views.decode(files["jpg"], keypoints.SIDE)))
            except views.Undecodable as err:
                bad.append({"key": key, "shard": Path(tar).name, "reason": str(err)[:200]})
                continue
            keys.append(key)
            paths.append(_source_path(files))
            images.append(im)
    except (tarfile.TarError, OSError, EOFError) as err:
        raise ValueError(f"{tar}: unreadable shard ({err}); check the set with `wsl data verify`") from None
    shortlist = verify == "local"
    groups = (views.index_views(im, shortlist=shortlist) if index_side else views.query_views(im, partial=shortlist)
              for im in images)
    vectors, counts = describe_groups(descriptor, groups)
    # Sampled by key, so the calibration set does not depend on how shards reach workers.
    thumbnails = {key: im for key, im in zip(keys, images)
                  if sample_every and zlib.crc32(key.encode()) % sample_every == 0}
    screened = [keypoints.screen_pixels(im) for im in images] if screen and not index_side else None
    return {"tar": tar, "keys": keys, "paths": paths, "vectors": vectors, "counts": counts, "bad": bad,
            "thumbnails": thumbnails, "keypoints": local, "screen": screened,
            "pixels": [pixels(views.framings(im)) for im in images] if verify == "align" else None}


def describe_groups(descriptor, groups) -> tuple[np.ndarray, list[int]]:
    """Every view of every group described, BATCH views or more per call; the views of only
    one batch exist at a time (a shard's index views together would be gigabytes)."""
    vectors, counts, batch = [np.zeros((0, descriptor.dim), np.float32)], [], []
    for group in groups:
        batch += group
        counts.append(len(group))
        if len(batch) >= BATCH:
            vectors.append(descriptor.describe(batch))
            batch = []
    if batch:
        vectors.append(descriptor.describe(batch))
    return np.concatenate(vectors), counts


def _source_path(files: dict) -> str:
    try:
        return str(json.loads(files["json"]).get("path", ""))
    except (KeyError, ValueError, TypeError, AttributeError):
        return ""


def shard_tasks(cfg: DedupConfig, tars: list[str], index_side: bool, sample_every: int = 0):
    """describe_shard over `tars`, in order, a bounded number in flight."""
    verify = cfg.verify.method
    screen = verify == "local" and cfg.verify.screen > 0
    workers = cfg.workers or cores()
    if cfg.descriptor.name == "learned" or workers == 1:
        # One network on one device: batches, not processes, are the parallelism.
        for tar in tars:
            yield describe_shard(tar, cfg.descriptor, index_side, sample_every, verify, screen)
        return
    with ProcessPoolExecutor(workers, initializer=pool_worker) as pool:
        pending = []
        for tar in tars:
            pending.append(pool.submit(describe_shard, tar, cfg.descriptor, index_side, sample_every, verify,
                                       screen))
            if len(pending) > 2 * workers:
                yield pending.pop(0).result()
        for future in pending:
            yield future.result()


def build_index(cfg: DedupConfig, sets: list[ShardSet], descriptor, store_dir: Path) -> tuple[EvalIndex, dict, dict]:
    """The index over all against sets, a sample of thumbnails for calibration, bad counts;
    for local-feature verification, every image's keypoints in a store in `store_dir`."""
    total = sum(s.manifest["num_samples"] for s in sets)
    local = cfg.verify.method == "local"
    store = keypoints.KeypointStore(store_dir, total) if local else None
    every = max(1, total // cfg.calibration.images)
    images, vectors, owner, thumbnails, bad, eval_pixels = [], [], [], {}, {}, []
    tars = [(s, e["file"], str(s.directory / e["file"])) for s in sets for e in s.manifest["shards"]]
    bar = tqdm(total=total, desc="index against", unit="img", disable=not cfg.progress)
    results = shard_tasks(cfg, [t for _, _, t in tars], index_side=True, sample_every=every)
    for (s, shard, _), result in zip(tars, results):
        for n, (key, path, count) in enumerate(zip(result["keys"], result["paths"], result["counts"])):
            if key in result["thumbnails"] and len(thumbnails) < cfg.calibration.images:
                thumbnails[len(images)] = result["thumbnails"][key]
            if store is not None:
                store.put(len(images), *result["keypoints"][n])
            owner += [len(images)] * count
            images.append(EvalImage(s.name, key, path, shard))
        vectors.append(result["vectors"])
        eval_pixels += result["pixels"] or []
        bad.setdefault(s.name, []).extend(result["bad"])
        bar.update(len(result["keys"]) + len(result["bad"]))
    bar.close()
    if not images:
        raise ValueError("no image of the against set(s) decodes: nothing to filter against")
    if store is not None:  # written, then read back memory-mapped: RAM holds only what pairs touch
        store.flush()
        store = keypoints.KeypointStore(store_dir)
    kind, nlist, _ = index_plan(len(owner), cfg.search.index, cfg.search.nlist, cfg.search.nprobe)
    if kind == "ivf":  # minutes at 92k images on a few cores, with no bar of its own
        say(f"index against: {len(owner):,} views into an inverted file of {nlist:,} cells (k-means, then each"
            " view to its cell)")
    index = EvalIndex(descriptor, images, vectors, np.asarray(owner, np.int64),
                      cfg.search.index, cfg.search.nlist, cfg.search.nprobe, eval_pixels, store)
    return index, thumbnails, bad


def settle_threshold(cfg: DedupConfig, descriptor, index: EvalIndex, thumbnails: dict) -> tuple[float, dict]:
    positive, negative = index.calibrate(thumbnails, cfg.calibration.seed)
    if cfg.threshold is not None:
        threshold, source = cfg.threshold, "given"
    elif descriptor.threshold is not None:
        threshold, source = descriptor.threshold, "descriptor default (bench/dedup.py)"
    else:
        threshold, source = choose_threshold(positive, negative, cfg.calibration.precision), "calibrated"
    return float(threshold), {**operating_point(positive, negative, threshold), "threshold_source": source}


def scan(cfg: DedupConfig, train: ShardSet, todo: list[str], index: EvalIndex, threshold: float,
         state: Path) -> None:
    tars = [str(train.directory / name) for name in todo]
    bar = tqdm(total=len(tars), desc="scan training shards", unit="shard", disable=not cfg.progress)
    cv2.setNumThreads(1)  # the pool below runs one alignment per core
    with ThreadPoolExecutor(cfg.workers or cores()) as threads:
        for name, result in zip(todo, shard_tasks(cfg, tars, index_side=False)):
            if cfg.self_dedup:  # before the result file, whose presence marks the shard done
                last = np.cumsum(result["counts"], dtype=np.int64) - 1  # each image's frame-cut view
                np.save(state / "shards" / f"{name}.npy", result["vectors"][last].astype(np.float16))
            found = scan_shard(result, index, threshold, cfg.near_misses, name, cfg.self_dedup, cfg.verify,
                               threads.map)
            shards.write_json(state / "shards" / f"{name}.json", found)
            bar.update()
    bar.close()


def scan_shard(result: dict, index: EvalIndex, threshold: float, near_misses: int, shard: str,
               keep_keys: bool, verify: VerifyConfig, align_map=map) -> dict:
    """Each training image's closest evaluation image, a match at `threshold`; with the
    alignment check, the pairs from `verify.candidates` are aligned (through `align_map`,
    a thread pool's map: OpenCV releases the GIL) and the aligned score decides; with
    local-feature verification, the shortlisted pairs are verified (local_check: its
    shortlist holds the best pair too, so the index is searched once, not twice)."""
    if verify.method == "local":
        rows, checked = local_check(result, index, verify, align_map)
        matched = [row["decided"] is not None for row in rows]
    else:
        rows, checked = described_pairs(result, index, shard, verify, align_map)
        matched = [row["score"] >= (verify.threshold if verify.method == "align" else threshold) for row in rows]
    matches = [row for row, hit in zip(rows, matched) if hit]
    near = sorted((row for row, hit in zip(rows, matched) if not hit),
                  key=lambda r: (-r.get("inliers", 0), -r["score"]))[:near_misses]
    found = {"shard": shard, "samples": len(result["keys"]) + len(result["bad"]), "matches": matches,
             "near": near, "bad": result["bad"], "aligned": checked}
    if keep_keys:  # --self joins every shard's images at the end
        found.update(keys=result["keys"], paths=result["paths"])
    return found


def described_pairs(result: dict, index: EvalIndex, shard: str, verify: VerifyConfig,
                    align_map=map) -> tuple[list[dict], int]:
    """Each training image's best pair by the descriptor; with the alignment check only the
    pairs from `verify.candidates`, scored aligned, and how many were aligned."""
    scores, who = index.best(result["vectors"], result["counts"])
    rows = [pair_row(index, key, path, shard, score, eval_id)
            for key, path, score, eval_id in zip(result["keys"], result["paths"], scores, who)]
    if verify.method != "align":
        return rows, 0
    # pairs below the candidates are neither matches nor near misses worth showing
    picked = [pos for pos, score in enumerate(scores) if score >= verify.candidates]
    aligned = align_map(lambda pos: aligned_score(result["pixels"][pos], index.pixels[who[pos]]), picked)
    rows = [{**rows[pos], "descriptor_score": rows[pos]["score"], "score": round(score, 5)}
            for pos, score in zip(picked, aligned)]
    return rows, len(rows)


def pair_row(index: EvalIndex, key: str, path: str, shard: str, score: float, eval_id: int) -> dict:
    hit = index.images[eval_id]
    return {"train_key": key, "train_path": path, "train_shard": shard, "against": hit.set_name,
            "eval_key": hit.key, "eval_path": hit.path, "eval_shard": hit.shard, "score": round(float(score), 5)}


SHOWN_LINES = 40   # matched keypoint pairs kept per verified pair, for report.html


def local_check(result: dict, index: EvalIndex, verify: VerifyConfig, pool_map=map) -> tuple[list[dict], int]:
    """Rows of the training images whose shortlist reaches `verify.floor`: each with the
    shortlisted evaluation image whose verification found the most inliers, and
    `decided` saying what made it a match ("descriptor": a global score from
    `verify.certain`; "keypoints": inliers and cover) or None. Training images are read
    again from their shard, only those shortlisted; the number of pairs verified comes
    back too."""
    short_scores, short_who = index.shortlist(result["vectors"], result["counts"], verify.shortlist)
    shard = Path(result["tar"]).name
    rows, wanted = {}, {}
    for pos, (key, path) in enumerate(zip(result["keys"], result["paths"])):
        if short_scores[pos, 0] >= verify.certain:
            rows[pos] = {**pair_row(index, key, path, shard, short_scores[pos, 0], short_who[pos, 0]),
                         "decided": "descriptor"}
        elif short_scores[pos, 0] >= verify.floor:
            wanted[key] = (pos, [(int(e), float(s)) for e, s in zip(short_who[pos], short_scores[pos])
                                 if e >= 0 and s >= verify.floor])
    data = {key: files.get("jpg", b"") for key, files in shards.iter_samples(Path(result["tar"])) if key in wanted}

    def check(key: str) -> tuple[int, int, float, dict]:
        pos, candidates = wanted[key]
        stored = [index.keypoints.get(e) for e, _ in candidates]
        if verify.screen and keypoints.screened_out(result["screen"][pos], stored, verify.screen):
            return (pos, *candidates[0], {"inliers": 0, "cover": 0.0, "pairs": []})
        query = keypoints.query_features(views.decode(data[key], keypoints.SIDE))
        results = keypoints.match_all(query, stored)
        found = [(e, s, result) for (e, s), result in zip(candidates, results)]
        return (pos, *max(found, key=lambda f: f[2]["inliers"]))

    for pos, eval_id, score, found in pool_map(check, list(wanted)):
        copy = keypoints.is_copy(found, verify.min_inliers, verify.min_cover)
        rows[pos] = {**pair_row(index, result["keys"][pos], result["paths"][pos], shard, score, eval_id),
                     "inliers": found["inliers"], "cover": round(found["cover"], 4),
                     "lines": found["pairs"][:SHOWN_LINES], "decided": "keypoints" if copy else None}
    return [rows[pos] for pos in sorted(rows)], sum(len(c) for _, c in wanted.values())
