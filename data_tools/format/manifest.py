"""A shard directory's manifest.json: assembled from the writers' per-shard stats, the
`--part i/N` manifests merged into one, and the summary a build prints.
"""
from __future__ import annotations

import dataclasses
import json
import re
from collections import Counter
from pathlib import Path

from data_tools.format import resampling, shards
from data_tools.labels import vocab

FORMAT = "wsl-shards/1"
BAD_EXAMPLES = 10       # bad paths kept in the manifest


def content_config(cfg) -> dict:
    """The settings of a build or convert config that decide the shards' content (not where
    or how fast they are built)."""
    data = dataclasses.asdict(cfg)
    for key in ("output", "workers", "progress", "part"):
        data.pop(key)
    return data


def manifest_name(part: tuple[int, int]) -> str:
    i, n = part
    return "manifest.json" if n == 1 else f"manifest.part-{i:05d}-of-{n:05d}.json"


def add_counts(counts) -> dict:
    """Sum {reason: n} dicts, keys sorted, so shards and parts add up to one stable manifest."""
    return dict(sorted(sum((Counter(c) for c in counts), Counter()).items()))


def first_examples(lists) -> list[dict]:
    """The BAD_EXAMPLES earliest bad samples in input order, wherever they were found (a
    malformed line, found by every part's count pass, once)."""
    unique = {e["key"]: e for examples in lists for e in examples}
    return [unique[key] for key in sorted(unique)[:BAD_EXAMPLES]]


def shard_entries(results: list[dict]) -> list[dict]:
    """The manifest's `shards` list from the writers' per-shard stats."""
    return [{k: r[k] for k in ("shard", "file", "index", "samples", "bytes", "sha256")} for r in results]


def sum_tag_counts(results: list[dict], num_classes: int) -> list[int]:
    return [sum(col) for col in zip(*(r["tag_counts"] for r in results))] or [0] * num_classes


def assemble(results: list[dict], entries: list[vocab.Entry], source, tally,
             per_shard: int, inputs_hash: str, cfg) -> dict:
    """The manifest of one build (or part) from its shards' stats and the count pass's tally."""
    tag_counts = sum_tag_counts(results, len(entries))
    return {
        "format": FORMAT,
        "name": cfg.shards.name,
        "label_type": "single" if source.single_label else "multi",
        "num_classes": len(entries),
        "vocabulary": "vocabulary.tsv",
        "num_samples": sum(r["samples"] for r in results),
        "num_shards": len(results),
        "samples_per_shard": per_shard,
        "part": cfg.part,
        "shards": shard_entries(results),
        "tag_counts": tag_counts,
        "bad_samples": add_counts(r["bad"] for r in results),
        "bad_examples": first_examples([tally.malformed, *(r["bad_examples"] for r in results)]),
        "converted": add_counts(r["converted"] for r in results),
        "dropped": dict(sorted(tally.dropped.items())),
        "inputs_sha256": inputs_hash,
        "config": content_config(cfg),
    }


PART_MANIFEST = re.compile(r"manifest\.part-(\d{5})-of-(\d{5})\.json")


def part_manifests(out: Path, n: int | None) -> tuple[int, dict[int, Path]]:
    """N and {i: path} of the `--part i/N` manifests to merge. An earlier build of the same
    data with another N lists the same shards: its parts are never mixed in."""
    found: dict[int, dict[int, Path]] = {}
    for path in out.glob("manifest.part-*-of-*.json"):
        match = PART_MANIFEST.fullmatch(path.name)
        if match:
            found.setdefault(int(match[2]), {})[int(match[1])] = path
    if not found:
        raise FileNotFoundError(f"{out} holds no manifest.part-*-of-*.json to merge")
    if n is None:
        if len(found) > 1:
            raise ValueError(f"cannot merge: {out} holds parts of builds in {' and '.join(map(str, sorted(found)))} "
                             "parts; say which with --parts N")
        n = next(iter(found))
    if n not in found:
        raise ValueError(f"cannot merge: {out} holds no part of a build in {n} parts "
                         f"(it holds parts of {' and '.join(map(str, sorted(found)))})")
    missing = [i for i in range(n) if i not in found.get(n, {})]
    if missing:
        raise ValueError(f"cannot merge: part(s) {', '.join(f'{i}/{n}' for i in missing)} not finished")
    return n, found[n]


def merge(directory: str, n: int | None = None) -> dict:
    """Join the part manifests of a `--part i/N` build into manifest.json (N: the only one
    present, unless given)."""
    out = Path(directory)
    n, paths = part_manifests(out, n)
    parts = [json.loads(paths[i].read_text()) for i in range(n)]
    first = parts[0]
    for p in parts[1:]:
        for key in ("inputs_sha256", "config", "num_classes", "samples_per_shard", "dropped"):
            if p[key] != first[key]:
                raise ValueError(f"cannot merge: parts disagree on '{key}' (built from different inputs or settings)")
    results = sorted((s for p in parts for s in p["shards"]), key=lambda s: s["shard"])
    if len({s["shard"] for s in results}) != len(results):
        raise ValueError(f"cannot merge: a shard is listed by two parts of {directory}")
    if not any(s["samples"] for s in results):
        raise ValueError(f"cannot merge: no part of {directory} holds a usable image")
    merged = dict(first)
    merged.update({
        "num_samples": sum(s["samples"] for s in results),
        "num_shards": len(results),
        "part": "0/1",
        "shards": results,
        "tag_counts": [sum(col) for col in zip(*(p["tag_counts"] for p in parts))],
        "bad_samples": add_counts(p["bad_samples"] for p in parts),
        "bad_examples": first_examples(p["bad_examples"] for p in parts),
        "converted": add_counts(p["converted"] for p in parts),
    })
    shards.write_json(out / "manifest.json", merged)
    resampling.fit(out, progress=False)
    return merged


def summary(manifest: dict) -> str:
    lines = [f"{manifest['num_samples']} samples in {manifest['num_shards']} shard(s), "
             f"{manifest['num_classes']} labels ({manifest['label_type']}-label)"]
    records = dict(manifest["dropped"])
    # A count of tags, not of records: shown under "dropped records" it read as images lost.
    unknown = records.pop("tags_not_in_wordnet", 0)
    for title, counts in (("dropped records", records), ("bad images", manifest["bad_samples"]),
                          ("converted images", manifest["converted"])):
        shown = {k: v for k, v in counts.items() if v}
        if shown:
            lines.append(f"{title}: " + ", ".join(f"{k}={v}" for k, v in shown.items()))
    if unknown:
        lines.append(f"hashtags not in WordNet: {unknown}, left out of their images' labels"
                     " (an image left with none is dropped as no_wordnet_tag)")
    for example in manifest["bad_examples"][:5]:
        where = example["path"] or f"manifest line {example['line']}"
        detail = f": {example['detail']}" if example.get("detail") else ""
        lines.append(f"  bad: {where} ({example['reason']}){detail}")
    return "\n".join(lines)
