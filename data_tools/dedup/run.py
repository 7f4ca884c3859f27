"""`wsl data dedup`: find the training samples that copy an evaluation image.

1. Index: every image of every `--against` set, cut of its frame, as several views
   (views.index_views), described and put in one FAISS index.
2. Threshold: the descriptor's measured default, a given `threshold`, or — for a
   descriptor without one — calibrated on synthetic copies of the against images; the
   calibration's precision and recall are reported either way.
3. Scan: the training shards, one task per shard in worker processes, never more than a
   few shards in memory. Each shard's result is a file under OUT/.dedup/shards, so a
   re-run resumes and `--part i/N` scans shards i, i+N, ...; the run without `--part`
   (or with `--merge`) joins them.
4. Finish: `--self` links training images closer than the threshold (k-NN graph) and
   keeps one per connected component; then matches.jsonl, summary.json, report.html.
"""
from __future__ import annotations

import json
import sys
import tarfile
import time
import zlib
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from tqdm import tqdm

from data_tools.build import parse_part
from data_tools.common import atomic, writable
from data_tools.common.fields import bounded, check_ranges
from data_tools.common.threads import cores, pool_worker
from data_tools.dedup import keypoints, views
from data_tools.dedup.descriptors import make_descriptor
from data_tools.dedup.keypoints import MIN_COVER, MIN_INLIERS
from data_tools.dedup.search import EvalImage, EvalIndex, choose_threshold, make_index, operating_point
from data_tools.dedup.sets import split_spec
from data_tools.dedup.verify import ALIGN_THRESHOLD, aligned_score, pixels
from data_tools.format import shards

BATCH = 256          # images described per call
BAD_EXAMPLES = 10


@dataclass
class DescriptorConfig:
    name: Literal["dct", "learned"] = "dct"
    side: int = bounded(32, lo=8, hi=256)          # dct: grey thumbnail side
    block: int = bounded(8, lo=2, hi=64)           # dct: low-frequency block kept
    checkpoint: str | None = None                  # learned: TorchScript, backbone.pt or state dict
    arch: str | None = None                        # learned: torchvision model of a plain state dict
    size: int = bounded(224, lo=32, hi=1024)       # learned: input side
    batch: int = bounded(64, lo=1, hi=4096)        # learned: images per forward


@dataclass
class SearchConfig:
    index: Literal["flat", "ivf"] = "flat"         # flat: exact; ivf: sub-ms queries at millions of views
    nlist: int = bounded(1024, lo=1)
    nprobe: int = bounded(32, lo=1)
    self_k: int = bounded(10, lo=2, hi=1000)       # --self: neighbours per training image


@dataclass
class CalibrationConfig:
    images: int = bounded(500, lo=2)               # against images copied synthetically
    precision: float = bounded(0.99, lo=0, hi=1, open_lo=True)  # target when calibrating
    seed: int = bounded(0, lo=0, hi=2**32 - 1)  # which images get copied, and how


@dataclass
class VerifyConfig:
    enabled: bool = False                          # a second look at candidate pairs
    method: Literal["align", "local"] = "align"    # align: dedup/verify.py; local: dedup/keypoints.py
    candidates: float = bounded(0.75, lo=-1, hi=1) # descriptor score from which a pair is aligned
    threshold: float = bounded(ALIGN_THRESHOLD, lo=-1, hi=1)  # aligned score from which it is a copy
    shortlist: int = bounded(8, lo=1, hi=64)       # local: evaluation images shortlisted per training image
    floor: float = bounded(0.5, lo=-1, hi=1)       # local: global score from which a shortlisted pair is verified
    certain: float = bounded(0.97, lo=-1, hi=1)    # local: global score that is a copy without verification
    min_inliers: int = bounded(MIN_INLIERS, lo=3)  # local: RANSAC inliers of a copy
    min_cover: float = bounded(MIN_COVER, lo=0, hi=1)  # local: share of the evaluation image they span


@dataclass
class DedupConfig:
    train: str = ""
    against: list[str] = field(default_factory=list)   # DIR or NAME=DIR
    out: str = ""
    apply: str | None = None                            # write filtered shards here
    self_dedup: bool = False
    components: bool = False                            # --self: remove whole components touching a match
    threshold: float | None = bounded(None, lo=-1, hi=1)  # None: the descriptor's, or calibrated
    descriptor: DescriptorConfig = field(default_factory=DescriptorConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    part: str = "0/1"
    merge: bool = False                                 # only join finished shard results
    workers: int = bounded(0, lo=0, hi=1024)            # 0: one per core
    report_pairs: int = bounded(300, lo=1)              # matched pairs shown in report.html
    near_misses: int = bounded(50, lo=0)                # closest non-matches shown
    progress: bool = True

    def check(self) -> None:
        if not self.train:
            raise ValueError("config key 'train' is required (the training shard directory, --train)")
        if not self.out:
            raise ValueError("config key 'out' is required (the result directory, --out)")
        if not self.against:
            raise ValueError("give at least one evaluation set to filter against (--against DIR or NAME=DIR)")
        if self.descriptor.name == "learned" and not self.descriptor.checkpoint:
            raise ValueError("'descriptor.checkpoint' is required for descriptor 'learned' (a local file)")
        if self.descriptor.block > self.descriptor.side:
            raise ValueError("'descriptor.block' must be <= 'descriptor.side'")
        if self.components and not self.self_dedup:
            raise ValueError("components=true needs --self (it removes near-duplicate chains among training images)")
        parse_part(self.part)


@dataclass
class ShardSet:
    name: str
    directory: Path
    manifest: dict


def open_set(spec: str, role: str) -> ShardSet:
    name, directory = split_spec(spec)
    path = Path(directory)
    if not path.is_dir():
        raise FileNotFoundError(f"{role} set {spec!r}: no such directory")
    manifest = shards.read_manifest(path)
    if manifest.get("num_samples", 0) == 0 or not manifest.get("shards"):
        raise ValueError(f"{role} set {spec!r} holds no samples")
    return ShardSet(name or path.resolve().name, path, manifest)


_DESCRIPTORS: dict[str, object] = {}


def cached_descriptor(desc_cfg: DescriptorConfig):
    """One descriptor per process and config: a network is loaded once, not per shard."""
    key = json.dumps(asdict(desc_cfg), sort_keys=True)
    if key not in _DESCRIPTORS:
        _DESCRIPTORS[key] = make_descriptor(desc_cfg)
    return _DESCRIPTORS[key]


def describe_shard(tar: str, desc_cfg: DescriptorConfig, index_side: bool, sample_every: int = 0,
                   verify: str | None = None) -> dict:
    """Worker: every sample of one shard decoded and described (the query views, or all
    the index views), undecodable images counted; the thumbnails of about one in
    `sample_every` images come back for calibration. With `verify` "align", every
    image's small pixels for aligning candidate pairs; with "local", the shortlist's
    views and, on the index side, every image's keypoints."""
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
    return {"tar": tar, "keys": keys, "paths": paths, "vectors": vectors, "counts": counts, "bad": bad,
            "thumbnails": thumbnails, "keypoints": local,
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
    verify = cfg.verify.method if cfg.verify.enabled else None
    workers = cfg.workers or cores()
    if cfg.descriptor.name == "learned" or workers == 1:
        # One network on one device: batches, not processes, are the parallelism.
        for tar in tars:
            yield describe_shard(tar, cfg.descriptor, index_side, sample_every, verify)
        return
    with ProcessPoolExecutor(workers, initializer=pool_worker) as pool:
        pending = []
        for tar in tars:
            pending.append(pool.submit(describe_shard, tar, cfg.descriptor, index_side, sample_every, verify))
            if len(pending) > 2 * workers:
                yield pending.pop(0).result()
        for future in pending:
            yield future.result()


def build_index(cfg: DedupConfig, sets: list[ShardSet], descriptor, store_dir: Path) -> tuple[EvalIndex, dict, dict]:
    """The index over all against sets, a sample of thumbnails for calibration, bad counts;
    for local-feature verification, every image's keypoints in a store in `store_dir`."""
    total = sum(s.manifest["num_samples"] for s in sets)
    local = cfg.verify.enabled and cfg.verify.method == "local"
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
    index = EvalIndex(descriptor, images, np.concatenate(vectors), np.asarray(owner, np.int64),
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


def scan_shard(result: dict, index: EvalIndex, threshold: float, near_misses: int, shard: str,
               keep_keys: bool, verify: VerifyConfig, align_map=map) -> dict:
    """Each training image's closest evaluation image, a match at `threshold`; with the
    alignment check, the pairs from `verify.candidates` are aligned (through `align_map`,
    a thread pool's map: OpenCV releases the GIL) and the aligned score decides; with
    local-feature verification, the shortlisted pairs are verified (local_check)."""
    scores, who = index.best(result["vectors"], result["counts"])
    rows = [pair_row(index, key, path, shard, score, eval_id)
            for key, path, score, eval_id in zip(result["keys"], result["paths"], scores, who)]
    decides, checked = threshold, 0
    if verify.enabled and verify.method == "align":
        # pairs below the candidates are neither matches nor near misses worth showing
        picked = [pos for pos, score in enumerate(scores) if score >= verify.candidates]
        aligned = align_map(lambda pos: aligned_score(result["pixels"][pos], index.pixels[who[pos]]), picked)
        rows = [{**rows[pos], "descriptor_score": rows[pos]["score"], "score": round(score, 5)}
                for pos, score in zip(picked, aligned)]
        decides, checked = verify.threshold, len(rows)
    if verify.enabled and verify.method == "local":
        rows, checked = local_check(result, index, verify, align_map)
        matched = [row["decided"] is not None for row in rows]
    else:
        matched = [row["score"] >= decides for row in rows]
    matches = [row for row, hit in zip(rows, matched) if hit]
    near = sorted((row for row, hit in zip(rows, matched) if not hit),
                  key=lambda r: (-r.get("inliers", 0), -r["score"]))[:near_misses]
    found = {"shard": shard, "samples": len(result["keys"]) + len(result["bad"]), "matches": matches,
             "near": near, "bad": result["bad"], "aligned": checked}
    if keep_keys:  # --self joins every shard's images at the end
        found.update(keys=result["keys"], paths=result["paths"])
    return found


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
        query = keypoints.query_features(views.decode(data[key], keypoints.SIDE))
        found = [(e, s, keypoints.match(query, *index.keypoints.get(e))) for e, s in candidates]
        return (pos, *max(found, key=lambda f: f[2]["inliers"]))

    for pos, eval_id, score, found in pool_map(check, list(wanted)):
        copy = keypoints.is_copy(found, verify.min_inliers, verify.min_cover)
        rows[pos] = {**pair_row(index, result["keys"][pos], result["paths"][pos], shard, score, eval_id),
                     "inliers": found["inliers"], "cover": round(found["cover"], 4),
                     "lines": found["pairs"][:SHOWN_LINES], "decided": "keypoints" if copy else None}
    return [rows[pos] for pos in sorted(rows)], sum(len(c) for _, c in wanted.values())


def settings(cfg: DedupConfig, train: ShardSet, sets: list[ShardSet]) -> dict:
    """What decides the results (the threshold follows from these: calibration is seeded):
    a reused OUT must have been made with the same."""
    return {"train": shards.fingerprint(train.manifest),
            "against": [[s.name, shards.fingerprint(s.manifest)] for s in sets],
            "descriptor": asdict(cfg.descriptor), "threshold": cfg.threshold,
            "calibration": asdict(cfg.calibration), "search": asdict(cfg.search), "self_dedup": cfg.self_dedup,
            "components": cfg.components,
            "verify": asdict(cfg.verify)}


def check_settings(state: Path, wanted: dict) -> None:
    path = state / "settings.json"
    if path.is_file():
        if json.loads(path.read_text()) != wanted:
            raise ValueError(f"{state.parent} holds results of another dedup run (other sets, descriptor "
                             "or threshold); choose an empty --out directory")
        return
    state.mkdir(parents=True, exist_ok=True)
    shards.write_json(path, wanted)


def run(cfg: DedupConfig) -> dict | None:
    """The whole stage; returns the summary, or None when this `--part` is done but others are not."""
    check_ranges(cfg)
    started = time.time()
    train = open_set(cfg.train, "training")
    sets = [open_set(spec, "against") for spec in cfg.against]
    names = [s.name for s in sets]
    if len(set(names)) != len(names):
        raise ValueError(f"against sets need distinct names, got {names}; use --against NAME=DIR")
    if cfg.apply:
        from data_tools.dedup.apply import check_target
        check_target(Path(cfg.apply))  # refused now, not after the scan
        writable.check_folder(cfg.apply, "--apply")
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a directory")
    writable.check_folder(out, "--out")
    state = out / ".dedup"
    mine, parts = parse_part(cfg.part)
    entries = train.manifest["shards"]
    todo = [e["file"] for e in entries[mine::parts] if not (state / "shards" / f"{e['file']}.json").is_file()]
    if cfg.merge and todo:
        raise ValueError(f"cannot merge: {len(todo)} training shard(s) not scanned yet, e.g. {todo[0]}")

    check_settings(state, settings(cfg, train, sets))
    (state / "shards").mkdir(parents=True, exist_ok=True)
    saved = state / "calibration.json"  # the threshold and what the index found, for --merge
    if todo or not saved.is_file():
        descriptor = cached_descriptor(cfg.descriptor)
        # One store per part: --part runs build their index at the same time.
        index, thumbnails, against_bad = build_index(cfg, sets, descriptor, state / f"keypoints.part{mine}")
        threshold, calibration = settle_threshold(cfg, descriptor, index, thumbnails)
        facts = {"threshold": threshold, "calibration": calibration, "against_bad": against_bad,
                 "index": {"kind": cfg.search.index, "images": len(index.images), "views": int(index.index.ntotal)},
                 "timings": {"index_s": round(time.time() - started, 2)}}
        shards.write_json(saved, facts)
        scan_started = time.time()
        scan(cfg, train, todo, index, threshold, state)
        facts["timings"]["scan_s"] = round(time.time() - scan_started, 2)
    else:  # every shard is scanned: joining needs no index, only what it decided
        facts = json.loads(saved.read_text())
    missing = [e["file"] for e in entries if not (state / "shards" / f"{e['file']}.json").is_file()]
    if missing:
        print(f"part {cfg.part} done; {len(missing)} shard(s) of other parts still to scan, then run "
              "the same command with --merge", file=sys.stderr)
        return None
    return finish(cfg, train, sets, facts)


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


def finish(cfg, train: ShardSet, sets, facts: dict) -> dict:
    """Join the shards' results: --self, matches.jsonl, summary.json, report.html, --apply."""
    threshold, against_bad = facts["threshold"], facts["against_bad"]
    from data_tools.dedup import report
    out = Path(cfg.out)
    results = [json.loads((out / ".dedup" / "shards" / f"{e['file']}.json").read_text())
               for e in train.manifest["shards"]]
    matches = removals(cfg, out, train, results, threshold)
    with atomic.replacing(out / "matches.jsonl") as f:
        for m in matches:
            f.write(json.dumps(m) + "\n")
    bad = [b for r in results for b in r["bad"]]
    removed = {m["train_key"] for m in matches}
    summary = {
        "train": {"directory": str(train.directory), "samples": sum(r["samples"] for r in results),
                  "undecodable": len(bad), "undecodable_examples": bad[:BAD_EXAMPLES]},
        "against": [{"name": s.name, "directory": str(s.directory.resolve()),
                     "fingerprint": shards.fingerprint(s.manifest), "num_samples": s.manifest["num_samples"],
                     "matched_train_samples": len({m["train_key"] for m in matches if m["against"] == s.name}),
                     "undecodable": len(against_bad.get(s.name, []))} for s in sets],
        "self": {"enabled": cfg.self_dedup, "components": cfg.components,
                 "removed": len({m["train_key"] for m in matches if m["against"] == "self"}),
                 "removed_through_chains": len({m["train_key"] for m in matches if m["against"] == "chain"})},
        "removed": len(removed),
        "most_matched": most_matched(matches),
        "descriptor": descriptor_name(cfg),
        "threshold": threshold,
        "verify": {**asdict(cfg.verify), "pairs_aligned": sum(r.get("aligned", 0) for r in results)},
        "calibration": facts["calibration"],
        "index": facts["index"],
        "timings": facts["timings"],
    }
    shards.write_json(out / "summary.json", summary)
    near = sorted((n for r in results for n in r["near"]), key=lambda n: -n["score"])[:cfg.near_misses]
    report.write(out / "report.html", summary, matches, near, train, sets, cfg.report_pairs)
    if cfg.apply:
        filtered = apply_filter(cfg, train, summary, matches, bad)
        summary["apply"] = {"directory": cfg.apply, "num_samples": filtered["num_samples"]}
        shards.write_json(out / "summary.json", summary)
    return summary


MANY_MATCHES = 3   # training images on one evaluation image that make it worth a look


def most_matched(matches: list[dict], top: int = 10) -> list[dict]:
    """Evaluation images that many training images matched: a photo re-posted many times,
    or a layout so plain that look-alikes reach the threshold. Either way, worth a look."""
    counts = Counter((m["against"], m["eval_key"], m["eval_path"]) for m in matches
                     if m["against"] not in ("self", "chain"))
    return [{"against": against, "eval_key": key, "eval_path": path, "matches": n}
            for (against, key, path), n in counts.most_common(top) if n >= MANY_MATCHES]


def dedup_record(summary: dict) -> dict:
    """The manifest's `dedup` entry (the contract the transfer stage's leak guard reads)."""
    return {
        "against": [{k: a[k] for k in ("name", "directory", "fingerprint", "num_samples")}
                    for a in summary["against"]],
        "descriptor": summary["descriptor"],
        "threshold": summary["threshold"],
        "verify": {k: summary["verify"][k] for k in ("enabled", "method", "candidates", "threshold")},
        "removed": summary["removed"],
        "self": summary["self"]["enabled"],
        "calibration": {k: summary["calibration"][k] for k in ("precision", "recall")},
    }


def apply_filter(cfg: DedupConfig, train: ShardSet, summary: dict, matches: list[dict], bad: list[dict]) -> dict:
    from data_tools.dedup.apply import apply
    removed, undecodable = defaultdict(set), defaultdict(set)
    for m in matches:
        removed[m["train_shard"]].add(m["train_key"])
    for b in bad:
        undecodable[b["shard"]].add(b["key"])
    return apply(train.directory, train.manifest, Path(cfg.apply), removed, undecodable,
                 dedup_record(summary), cfg.workers, cfg.progress)


def descriptor_name(cfg: DedupConfig) -> str:
    d = cfg.descriptor
    if d.name == "dct":
        return f"dct-rgb-{d.side}px-{d.block}x{d.block}"
    return f"learned:{Path(d.checkpoint).name}"


def removals(cfg, out: Path, train: ShardSet, results: list[dict], threshold: float) -> list[dict]:
    """The shards' matches to evaluation images, then --self's, then the chain rule's."""
    matches = [m for r in results for m in r["matches"]]
    if cfg.self_dedup:
        # The chain rule must see the copies' own self matches: they join a copy to its component.
        already = set() if cfg.components else {m["train_key"] for m in matches}
        matches += self_matches(cfg, out, train, results, threshold, already)
        if cfg.components:
            matches = chain_matches(matches)
    return matches


def self_matches(cfg, out: Path, train: ShardSet, results: list[dict], threshold: float,
                 already: set[str]) -> list[dict]:
    """Connected components of the training images' k-NN graph above the threshold: the
    first image of each component (in shard order) stays, the others are matches to it."""
    keys, paths, shard_of, vectors = [], [], [], []
    for e, found in zip(train.manifest["shards"], results):
        keys += found["keys"]
        paths += found["paths"]
        shard_of += [e["file"]] * len(found["keys"])
        vectors.append(np.load(out / ".dedup" / "shards" / f"{e['file']}.npy").astype(np.float32))
    x = np.concatenate(vectors)
    if len(x) < 2:
        return []
    index = make_index(x.shape[1], cfg.search.index, cfg.search.nlist, cfg.search.nprobe, x)
    scores, rows = index.search(x, min(cfg.search.self_k, len(x)))
    parent = list(range(len(x)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, (row_scores, row_ids) in enumerate(zip(scores, rows)):
        for s, j in zip(row_scores, row_ids):
            if j >= 0 and j != i and s >= threshold:
                a, b = root(i), root(int(j))
                if a != b:
                    parent[max(a, b)] = min(a, b)  # the root is the component's first image
    found = []
    for i in range(len(x)):
        r = root(i)
        if r != i and keys[i] not in already:
            score = float(np.dot(x[i], x[r]))
            found.append({"train_key": keys[i], "train_path": paths[i], "train_shard": shard_of[i],
                          "against": "self", "eval_key": keys[r], "eval_path": paths[r],
                          "eval_shard": shard_of[r], "score": round(score, 5)})
    return found



def chain_matches(matches: list[dict]) -> list[dict]:
    """DINOv2's rule: every training image in a near-duplicate component (the --self
    matches join an image to its component's first one) that holds a copy of an
    evaluation image goes too. Its self match becomes a "chain" match to that copy,
    and so does the first image of the component."""
    leaked = {m["train_key"]: m for m in matches if m["against"] not in ("self", "chain")}
    component = defaultdict(list)                       # first image -> its self matches
    for m in matches:
        if m["against"] == "self":
            component[m["eval_key"]].append(m)
    out = [m for m in matches if m["against"] != "self"]
    for first, members in component.items():
        keys = [first] + [m["train_key"] for m in members]
        copy = next((leaked[k] for k in keys if k in leaked), None)
        if copy is None:
            out += members
            continue
        source = {"eval_key": copy["train_key"], "eval_path": copy["train_path"], "eval_shard": copy["train_shard"]}
        for m in members:
            if m["train_key"] not in leaked:
                out.append({**m, "against": "chain", **source})
        if first not in leaked:
            head = members[0]
            out.append({"train_key": first, "train_path": head["eval_path"], "train_shard": head["eval_shard"],
                        "against": "chain", **source, "score": head["score"]})
    return out
