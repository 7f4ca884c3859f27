"""How well the near-duplicate filter tells the demo's planted leaks from look-alike scenes.

    python bench/demo_leaks.py                 # the demo's fast corpus, seed 0, 80 px scenes
    python bench/demo_leaks.py --size 40       # the scenes as they were drawn before

Generates the demo's fast corpus (launch/demo.py VARIANTS["fast"]), then makes --copies
transformed copies of its target test images the way the demo plants leaks
(drawing.transformed_copy: crop 85-95 % anywhere, rescale 0.8-1.5x, maybe mirrored, JPEG
q55-80) and scores them, with the filter's own functions, against the index of the test
images: the descriptor's score of each copy against its original, and of every hashtag
training image against its closest test image (the look-alikes); then the same pairs
aligned (data_tools/dedup/verify.py), the look-alikes from the alignment check's candidate
score up. Prints the quantiles and the separation of both.
"""
from __future__ import annotations

import argparse
import io
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_tools.dedup import views  # noqa: E402
from data_tools.dedup.config import VerifyConfig  # noqa: E402
from data_tools.dedup.descriptors import DCT_THRESHOLD, DCTDescriptor  # noqa: E402
from data_tools.dedup.search import EvalIndex  # noqa: E402
from data_tools.dedup.verify import aligned_score, pixels  # noqa: E402
from launch.demo import VARIANTS  # noqa: E402
from launch.fixtures import concepts, drawing, scenes  # noqa: E402


def best_matches(index: EvalIndex, descriptor, images: list) -> tuple[np.ndarray, np.ndarray]:
    groups = [views.query_views(im) for im in images]
    return index.best(descriptor.describe([v for g in groups for v in g]), [len(g) for g in groups])


def quantiles(name: str, values: np.ndarray) -> str:
    q = np.quantile(values, [0, 0.001, 0.01, 0.5])
    return f"{name}: min {q[0]:.3f}, 0.1 % {q[1]:.3f}, 1 % {q[2]:.3f}, median {q[3]:.3f} ({len(values)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=VARIANTS["fast"].scenes.size)
    parser.add_argument("--copies", type=int, default=600)
    args = parser.parse_args()
    cfg = concepts.SceneConfig(**{**asdict(VARIANTS["fast"].scenes), "seed": args.seed, "size": args.size})
    with tempfile.TemporaryDirectory() as tmp:
        corpus = scenes.generate(tmp, cfg, progress=False)
        load = lambda p: views.decode(Path(p).read_bytes())  # noqa: E731
        tests = sorted(Path(corpus.target_test).rglob("*.jpg"))
        planted = {leak["path"] for leak in corpus.leaks}
        train = [load(p) for p in sorted((Path(tmp) / "hashtags" / "imgs").glob("*.jpg"))
                 if str(p.relative_to(tmp)) not in planted]
        originals = [load(p) for p in tests]
        rng = np.random.default_rng(args.seed + 1)
        source = rng.integers(0, len(tests), args.copies)
        copies = []
        for i in source:
            image, _ = drawing.transformed_copy(rng, tests[i])
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=90)   # as the generator stores it
            copies.append(views.decode(buffer.getvalue()))
    descriptor = DCTDescriptor()
    vectors, owner = [], []
    for i, im in enumerate(originals):
        group = views.index_views(im)
        vectors.append(descriptor.describe(group))
        owner += [i] * len(group)
    index = EvalIndex(descriptor, originals, np.concatenate(vectors), np.asarray(owner))
    copy_scores, copy_who = best_matches(index, descriptor, copies)
    copy_scores = np.where(copy_who == source, copy_scores, -1.0)  # matched to another image: missed
    other_scores, other_who = best_matches(index, descriptor, train)
    print(f"{args.size} px scenes, seed {args.seed}: {args.copies} transformed copies of {len(tests)} target "
          f"test images; {len(train)} hashtag training images as look-alikes")
    print(quantiles("descriptor, copies", copy_scores))
    print(f"descriptor, look-alikes: max {other_scores.max():.3f}; at or above the shipped {DCT_THRESHOLD}: "
          f"{int((other_scores >= DCT_THRESHOLD).sum())}; copies below it: {int((copy_scores < DCT_THRESHOLD).sum())}")
    check = VerifyConfig()
    original_pixels = [pixels(views.framings(im)) for im in originals]
    aligned_copies = np.array([aligned_score(pixels(views.framings(c)), original_pixels[i])
                               for c, i in tqdm(zip(copies, source), total=len(copies), desc="align copies")])
    candidates = np.flatnonzero(other_scores >= check.candidates)
    aligned_others = np.array([aligned_score(pixels(views.framings(train[k])), original_pixels[other_who[k]])
                               for k in tqdm(candidates, desc="align look-alikes")])
    # A copy the descriptor puts under the candidates is never aligned: missed.
    aligned_copies = np.where(copy_scores >= check.candidates, aligned_copies, -1.0)
    print(quantiles("aligned, copies", aligned_copies))
    print(f"aligned, look-alikes from descriptor {check.candidates}: {len(candidates)} pairs, max "
          f"{aligned_others.max() if len(aligned_others) else float('nan'):.3f}; at or above the shipped "
          f"{check.threshold}: {int((aligned_others >= check.threshold).sum())}; copies below it: "
          f"{int((aligned_copies < check.threshold).sum())}")


if __name__ == "__main__":
    main()
