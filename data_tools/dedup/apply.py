"""`--apply OUT`: the training shards without the removed samples, in `wsl data build`'s
format (same shard names, DALI indexes, manifest), passing `wsl data verify`.

The manifest gains a `dedup` record that the transfer stage reads to warn when its
evaluation set was not among those filtered against:

    {"against": [{"name", "directory", "fingerprint", "num_samples"}], "descriptor",
     "threshold", "removed", "self", "calibration": {"precision", "recall"}}
"""
from __future__ import annotations

import json
import shutil
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from tqdm import tqdm

from data_tools.common.threads import cores, pool_worker
from data_tools.format import resampling, shards
from data_tools.format.manifest import add_counts, shard_entries, sum_tag_counts


def filter_shard(src: str, dst: str, shard: int, drop: set[str], num_classes: int) -> dict:
    """Worker: copy one shard's samples except `drop` (byte for byte), with its stats."""
    tag_counts = Counter()
    kept = []
    for key, files in shards.iter_samples(Path(src)):
        if key in drop:
            continue
        meta = json.loads(files["json"])
        tag_counts.update(meta["labels"])
        kept.append((key, files["jpg"], meta))
    info = shards.write_shard(Path(dst), kept)
    name = Path(dst).name
    return {"shard": shard, "file": name, "index": shards.index_file(name), "samples": len(kept), **info,
            "tag_counts": [tag_counts.get(i, 0) for i in range(num_classes)]}


def check_target(out: Path) -> None:
    """An empty directory, or the output of an earlier --apply (re-run)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise NotADirectoryError(f"--apply {out}: not a directory")
    if any(out.iterdir()):
        manifest = out / "manifest.json"
        if not (manifest.is_file() and "dedup" in json.loads(manifest.read_text())):
            raise ValueError(f"--apply {out}: directory is not empty; choose an empty one")


def apply(train_dir: Path, manifest: dict, out: Path, removed: dict[str, set[str]],
          undecodable: dict[str, set[str]], record: dict, workers: int = 0, progress: bool = True) -> dict:
    """`removed` and `undecodable`: keys per shard file. An image that does not decode
    would fail verify downstream, so it goes too, counted apart from the removed."""
    check_target(out)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(train_dir / manifest["vocabulary"], out / manifest["vocabulary"])
    jobs = [(str(train_dir / e["file"]), str(out / e["file"]), e["shard"],
             removed.get(e["file"], set()) | undecodable.get(e["file"], set()), manifest["num_classes"])
            for e in manifest["shards"]]
    results = []
    bar = tqdm(total=len(jobs), desc="write filtered shards", unit="shard", disable=not progress)
    with ProcessPoolExecutor(workers or cores(), initializer=pool_worker) as pool:
        for result in pool.map(filter_shard, *zip(*jobs)):
            results.append(result)
            bar.update()
    bar.close()
    filtered = dict(manifest)
    filtered.update({
        "num_samples": sum(r["samples"] for r in results),
        "num_shards": len(results),
        "part": "0/1",
        "shards": shard_entries(results),
        "tag_counts": sum_tag_counts(results, manifest["num_classes"]),
        "bad_samples": add_counts([manifest.get("bad_samples", {}),
                                   {"undecodable": n} if (n := sum(map(len, undecodable.values()))) else {}]),
        "dedup": record,
    })
    shards.write_json(out / "manifest.json", filtered)
    resampling.fit(out, progress=False)  # the loaders' per-tag weights, refitted without the removed
    return filtered
