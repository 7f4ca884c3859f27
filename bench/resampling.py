"""The square-root law on multi-tag data: each tag's share of the resampled stream against
its image count, for the one-tag rule (an image's mean of 1/sqrt(count) over its tags) and
for the fitted weights (data_tools/format/resampling.py). Goal: exponent 0.5.

    python bench/resampling.py --images 2000000 --tags 17000 --per-image 2 3

Zipf tag popularity (1/rank), each image 2-3 distinct tags; shares are the stream's
expectation (each image's rate summed over its tags), in shards of 10,000 images.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from data_tools.format import resampling  # noqa: E402

PER_SHARD = 10_000


def zipf_shards(images: int, tags: int, per_image: list[int], seed: int = 0):
    gen = np.random.default_rng(seed)
    popularity = 1 / np.arange(1, tags + 1)
    drawn = gen.choice(tags, size=(images, max(per_image)), p=popularity / popularity.sum())
    sizes = gen.choice(per_image, size=images)
    out = []
    for start in range(0, images, PER_SHARD):
        labels = [np.unique(row[:k]) for row, k in zip(drawn[start:start + PER_SHARD], sizes[start:start + PER_SHARD])]
        ptr = np.concatenate([[0], np.cumsum([len(x) for x in labels])]).astype(np.int64)
        out.append((ptr, np.concatenate(labels).astype(np.int64)))
    return out


def law(shares: np.ndarray, counts: np.ndarray) -> str:
    keep = counts >= 10
    slope = np.polyfit(np.log(counts[keep]), np.log(shares[keep]), 1)[0]
    top = np.argsort(-counts)[: max(1, len(counts) // 100)]
    return f"exponent {slope:.3f}, top 1 % of tags take {shares[top].sum() / shares.sum():.1%} of the stream"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2_000_000)
    parser.add_argument("--tags", type=int, default=17_000)
    parser.add_argument("--per-image", type=int, nargs="+", default=[2, 3])
    args = parser.parse_args()
    parts = zipf_shards(args.images, args.tags, args.per_image)
    counts = sum(np.bincount(idx, minlength=args.tags) for _, idx in parts).astype(float)
    inverse = 1 / np.sqrt(np.maximum(counts, 1))
    naive = np.zeros(args.tags)
    for ptr, idx in parts:
        rate = np.add.reduceat(inverse[idx], ptr[:-1]) / np.diff(ptr)
        naive += np.bincount(idx, np.repeat(rate, np.diff(ptr)), args.tags)
    ideal = np.sqrt(counts)
    print(f"{args.images:,} images, {args.tags:,} Zipf tags, {args.per_image} tags per image")
    print(f"  target (sqrt of count):     {law(ideal, counts)}")
    print(f"  one-tag rule, mean 1/sqrt:  {law(naive, counts)}")
    start = time.perf_counter()
    log_weight, _ = resampling.fit_shards(lambda: parts, args.tags)
    fitted, _ = resampling.shares(lambda: parts, log_weight)
    print(f"  fitted weights (raking):    {law(fitted, counts)} (fit: {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
