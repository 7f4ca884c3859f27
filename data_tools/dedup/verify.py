"""A second look at each candidate pair: the training image aligned on its evaluation
image by normalised cross-correlation (OpenCV's matchTemplate) over scales, positions and
a mirror, in colour and at twice the descriptor's detail.

The descriptor keeps the low frequencies of a few fixed views, so it scores a copy that
was cropped between two views a little low, and two unrelated images with the same layout
(one large object on a plain background: generated scenes, product shots) high. Aligning
the pair on a dense grid answers both: a copy lines up with its original to within a
pixel, a look-alike does not line up in its details. It costs milliseconds per pair, so
it runs only on pairs the descriptor put above `verify.candidates`.

It is off by default: on real photographs (bench/dedup.py) the descriptor alone separates
copies from unrelated photos, and alignment adds nothing (unrelated photos with large flat
areas align up to 0.88, framed copies as low as 0.48). It is for collections of look-alike
layouts, such as the demo's generated scenes, where it does separate them.
"""
from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

SIDE = 64                                    # pixels on the shorter side of both images
FRACTIONS = np.linspace(1.0, 0.6, 9)         # share of the original's side the copy may show
# Under the demo's transformed copies (1,800, all at 0.870 or above) and over their closest
# look-alike scenes (all but 3 of 6,000): bench/demo_leaks.py, docs/benchmarks.md "Demo".
ALIGN_THRESHOLD = 0.83


def pixels(framings: list[Image.Image]) -> list[np.ndarray]:
    """An image's framings (views.framings: the training side has them already, as its
    query views) as uint8 RGB with the shorter side SIDE."""
    out = []
    for framing in framings:
        scale = SIDE / min(framing.size)
        size = (max(1, round(framing.width * scale)), max(1, round(framing.height * scale)))
        out.append(np.asarray(framing.convert("RGB").resize(size, Image.BILINEAR), np.uint8))
    return out


def aligned_score(query: list[np.ndarray], original: list[np.ndarray]) -> float:
    """The best correlation of the query, at any of FRACTIONS of the original's size, any
    position and either mirror, over every pair of their framings."""
    return max(_align(q, o) for q in query for o in original)


def _align(query: np.ndarray, original: np.ndarray) -> float:
    h, w = original.shape[:2]
    aspect = query.shape[1] / query.shape[0]
    q = query.astype(np.float32)
    o = original.astype(np.float32)
    best = -1.0
    for fraction in FRACTIONS:
        tw, th = fraction * w, fraction * w / aspect
        if th > h:  # the copy is taller than the original allows: fit its height instead
            tw, th = fraction * h * aspect, fraction * h
        size = (min(w, max(4, round(tw))), min(h, max(4, round(th))))
        template = cv2.resize(q, size, interpolation=cv2.INTER_AREA)
        for t in (template, np.ascontiguousarray(template[:, ::-1])):
            scores = cv2.matchTemplate(o, t, cv2.TM_CCOEFF_NORMED)
            best = max(best, float(np.nan_to_num(scores, nan=-1.0).max()))  # a flat template has none
    return best
