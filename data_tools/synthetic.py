"""Generated, photo-like JPEGs with hashtags: the CPU demo's data and the tests' data.

Smooth gradients with a few discs and sensor noise compress like photographs (unlike
uniform noise), so decode and shard sizes behave as they would on real images.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
from PIL import Image

# Synonyms, plurals, a two-sense word, odd case/Unicode, and tags WordNet does not know.
HASHTAGS = ["#brownbear", "#ursusarctos", "#Dog", "#dogs", "#sunset", "#beach", "#cat", "#cats",
            "#bear", "#NewYork", "#Café", "#mountain", "#tree", "#flower", "#car", "#xyzzyq", "#instagood"]


def photo(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(0, 255, size=3)
    slope = rng.uniform(-1, 1, size=(3, 2)) * (128 / max(width, height))
    arr = np.stack([base[c] + slope[c, 0] * x + slope[c, 1] * y for c in range(3)], axis=-1)
    for _ in range(3):
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(4, max(5, width / 3))
        arr[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = rng.uniform(0, 255, size=3)
    arr += rng.normal(0, 6, size=arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def write_corpus(root: Path, count: int, seed: int = 0, size: tuple[int, int] = (96, 72),
                 tags: list[str] = HASHTAGS) -> Path:
    """`count` JPEGs under root/imgs and a JSONL manifest root/tags.jsonl; returns the manifest."""
    rng = np.random.default_rng(seed)
    picker = random.Random(seed)
    root = Path(root)
    (root / "imgs").mkdir(parents=True, exist_ok=True)
    manifest = root / "tags.jsonl"
    jitter = max(1, size[0] // 6)
    weights = [1 / (rank + 1) for rank in range(len(tags))]
    with open(manifest, "w") as f:
        for i in range(count):
            width = int(size[0] + rng.integers(-jitter, jitter + 1))
            height = int(size[1] + rng.integers(-jitter, jitter + 1))
            photo(rng, width, height).save(root / "imgs" / f"{i:05d}.jpg", quality=90)
            # Zipf-like tag popularity, as on real hashtag data.
            chosen = sorted(set(picker.choices(tags, weights, k=picker.randint(1, 4))), key=tags.index)
            f.write(json.dumps({"path": f"imgs/{i:05d}.jpg", "tags": chosen}) + "\n")
    return manifest
