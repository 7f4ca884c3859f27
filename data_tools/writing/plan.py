"""Which records each shard holds: fixed-size groups in input order, or (order=hash) each
record in the shard its key's hash picks. Shard i always holds the same records, so
every `--part` cuts the input at the same places.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter
from itertools import groupby
from pathlib import Path
from typing import Callable

from data_tools.inputs.sources import Record
from data_tools.writing.count import record_problem

Labels = Callable[[Record], list[str]]   # a record's canonical ids (build.Labeler)
BUCKET_RECORDS = 200_000  # order=hash: records per bucket file, the most held in memory at once
MAX_BUCKETS = 1000        # ... unless that would need more open files than this


def vocab_labels(record: Record, labeler: Labels, index_of: dict[str, int], dropped: Counter) -> list[int]:
    """The record's vocabulary indices; none for a record the count pass dropped (already
    counted there) or one with no tag in the vocabulary (counted here)."""
    ids = labeler(record)
    if record_problem(record, ids):
        return []
    labels = sorted(index_of[sid] for sid in ids if sid in index_of)
    if not labels:
        dropped["no_vocab_tag"] += 1
    return labels


def plan(source, labeler: Labels, index_of: dict[str, int], per_shard: int, part: tuple[int, int], dropped: Counter):
    """Yield (shard index, [(key, path, labels, json meta)]) for this part's shards."""
    mine, parts = part
    shard, group = 0, []
    for record in source:
        labels = vocab_labels(record, labeler, index_of, dropped)
        if not labels:
            continue
        if shard % parts == mine:
            group.append((record.key, record.path, labels, record.sample_meta()))
        else:
            group.append(None)  # keep positions so every part cuts shards at the same records
        if len(group) == per_shard:
            if shard % parts == mine:
                yield shard, group
            shard, group = shard + 1, []
    if group and shard % parts == mine:
        yield shard, group


def key_hash(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")


def mixed_plan(source, labeler: Labels, index_of: dict[str, int], total: int, per_shard: int,
               part: tuple[int, int], dropped: Counter, workdir: Path):
    """Like `plan`, with order=hash: record -> shard hash(key) * total / 2^64, each shard's
    records sorted by hash. Memory stays bounded: this part's records are scattered into
    bucket files on disk (a few shards each), then each bucket is read back, sorted and cut."""
    mine, parts = part
    ours = range(mine, total, parts)
    buckets = max(1, min(MAX_BUCKETS, -(-len(ours) * per_shard // BUCKET_RECORDS)))
    per_bucket = -(-len(ours) // buckets)
    folder = workdir / f"scatter-{mine:05d}-of-{parts:05d}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    files = [open(folder / f"{b:05d}.jsonl", "w") for b in range(buckets)]
    try:
        for record in source:
            labels = vocab_labels(record, labeler, index_of, dropped)
            if not labels:
                continue
            h = key_hash(record.key)
            shard = (h * total) >> 64
            if shard % parts == mine:
                files[shard // parts // per_bucket].write(
                    json.dumps([shard, h, record.key, record.path, labels, record.sample_meta()]) + "\n")
    finally:
        for f in files:
            f.close()
    for b in range(buckets):
        bucket = folder / f"{b:05d}.jsonl"
        rows = sorted(json.loads(line) for line in bucket.read_text().splitlines())
        bucket.unlink()
        groups = {shard: list(group) for shard, group in groupby(rows, key=lambda r: r[0])}
        for shard in ours[b * per_bucket:(b + 1) * per_bucket]:
            yield shard, [(key, path, labels, meta) for _, _, key, path, labels, meta in groups.get(shard, [])]
    shutil.rmtree(folder)
