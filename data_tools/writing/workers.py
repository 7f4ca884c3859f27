"""The write pass's workers: each converts one shard's images and writes the shard, then its
stats file, which marks it done for a re-run.
"""
from __future__ import annotations

import json
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

from tqdm import tqdm

from data_tools.common.log import say
from data_tools.common.threads import cores, pool_worker
from data_tools.format import shards
from data_tools.format.manifest import BAD_EXAMPLES
from data_tools.inputs.images import BadImage, ImageRules, map_box, prepare


def write_one_shard(out: str, name: str, shard: int, group: list, rules: ImageRules, num_classes: int) -> dict:
    """Worker: read, check and convert each image, write the shard, then its stats file."""
    remove_temp_files(Path(out), shards.shard_file(name, shard))
    tag_counts, bad, converted, examples = Counter(), Counter(), Counter(), []
    samples = []
    for key, path, labels, meta in group:
        try:
            with open(path, "rb") as f:
                data = f.read()
            jpeg, conversions = prepare(data, rules)
        except BadImage as err:
            bad[err.reason] += 1
            examples.append({"key": key, "path": path, "reason": err.reason})
            continue
        except OSError as err:
            reason = "missing_file" if isinstance(err, FileNotFoundError) else "unreadable_file"
            bad[reason] += 1
            examples.append({"key": key, "path": path, "reason": reason})
            continue
        converted.update(conversions)
        if "bbox" in meta and {"resized", "exif_rotated"} & set(conversions):
            meta = {**meta, "bbox": map_box(meta["bbox"], data, jpeg)}
        tag_counts.update(labels)
        samples.append((key, jpeg, {"labels": labels, **meta}))
    tar = shards.shard_file(name, shard)
    info = shards.write_shard(Path(out) / tar, samples)
    stats = {
        "shard": shard, "file": tar, "index": shards.index_file(tar), "samples": len(samples), **info,
        "tag_counts": [tag_counts.get(i, 0) for i in range(num_classes)],
        "bad": dict(bad), "converted": dict(converted), "bad_examples": examples[:BAD_EXAMPLES],
    }
    shards.write_json(stats_path(out, shard), stats)
    return stats


def remove_temp_files(out: Path, tar: str) -> None:
    """What a writer of this shard killed mid-way left (each writer's temporary files have
    names of their own); only this shard's writer runs now."""
    stem = tar[: -len(".tar")]
    for path in [*out.glob(f"{stem}.*.tmp"), *(out / ".build").glob(f"{stem.rsplit('-', 1)[1]}.json.*.tmp")]:
        path.unlink(missing_ok=True)


def stats_path(out: str | Path, shard: int) -> Path:
    return Path(out) / ".build" / f"{shard:06d}.json"


def finished(out: Path, shard: int) -> dict | None:
    path = stats_path(out, shard)
    if not path.is_file():
        return None
    stats = json.loads(path.read_text())
    tar = out / stats["file"]
    if not tar.is_file() or tar.stat().st_size != stats["bytes"]:
        return None
    return stats


def run_jobs(cfg, out: Path, jobs, rules: ImageRules, num_classes: int, total: int) -> list[dict]:
    results, skipped = [], 0
    bar = tqdm(total=total, desc="write shards", unit="shard", disable=not cfg.progress)
    workers = cfg.workers or cores()

    def todo():
        nonlocal skipped
        for shard, group in jobs:
            done = finished(out, shard)
            if done is not None:
                skipped += 1
                results.append(done)
                bar.update()
                continue
            yield (str(out), cfg.shards.name, shard, group, rules, num_classes)

    if workers == 1:
        for args in todo():
            results.append(write_one_shard(*args))
            bar.update()
    else:
        with ProcessPoolExecutor(workers, initializer=pool_worker) as pool:
            pending = set()
            # Bounded in-flight work: the record groups of a billion-image input never
            # pile up in memory ahead of the workers.
            for args in todo():
                pending.add(pool.submit(write_one_shard, *args))
                if len(pending) >= 2 * workers:
                    pending = _collect(pending, results, bar)
            while pending:
                pending = _collect(pending, results, bar)
    bar.close()
    if skipped:
        say(f"resumed: {skipped} finished shard(s) kept")
    return sorted(results, key=lambda s: s["shard"])


def _collect(pending: set, results: list, bar) -> set:
    done, pending = wait(pending, return_when=FIRST_COMPLETED)
    for future in done:
        results.append(future.result())
        bar.update()
    return pending
