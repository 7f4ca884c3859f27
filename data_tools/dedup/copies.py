"""The edits a web copy of an image goes through: the bench's labelled copies and the
synthetic copies that calibrate a descriptor's threshold on the run's own images."""
from __future__ import annotations

import io
import random

from PIL import Image, ImageEnhance, ImageOps

from data_tools.dedup.views import crop


def half(im: Image.Image) -> Image.Image:
    return im.resize((max(1, im.width // 2), max(1, im.height // 2)), Image.BICUBIC)


def jpeg(im: Image.Image, quality: int = 30) -> Image.Image:
    out = io.BytesIO()
    im.save(out, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(out.getvalue())).convert("RGB")


def centre_crop(im: Image.Image, fraction: float = 0.8) -> Image.Image:
    return crop(im, fraction)


def flip(im: Image.Image) -> Image.Image:
    return ImageOps.mirror(im)


def colour(im: Image.Image, brightness: float = 1.2, saturation: float = 1.4, warmth: int = 12) -> Image.Image:
    """Brighter, more saturated and warmer: a typical filter."""
    im = ImageEnhance.Color(ImageEnhance.Brightness(im).enhance(brightness)).enhance(saturation)
    r, g, b = im.split()
    return Image.merge("RGB", (r.point(lambda v: min(255, v + warmth)), g, b.point(lambda v: max(0, v - warmth))))


def border(im: Image.Image, fraction: float = 0.1) -> Image.Image:
    """A black frame `fraction` of the longer side wide, the image shrunk to fit inside the
    original size (how a frame filter or a letterboxed repost looks)."""
    pad = max(1, round(max(im.size) * fraction))
    inner = im.resize((max(1, im.width - 2 * pad), max(1, im.height - 2 * pad)), Image.BICUBIC)
    return ImageOps.expand(inner, pad, fill=(0, 0, 0))


def combined(im: Image.Image) -> Image.Image:
    """Downscale to half, centre crop 85 %, JPEG quality 40."""
    return jpeg(centre_crop(half(im), 0.85), 40)


# The bench's labelled edits, each a fixed setting (docs/benchmarks.md names them).
EDITS = {
    "half": half,
    "jpeg30": jpeg,
    "crop80": centre_crop,
    "flip": flip,
    "colour": colour,
    "border": border,
    "combined": combined,
}


def random_copy(im: Image.Image, rng: random.Random) -> Image.Image:
    """One or two random edits with random strength, for calibration: settings drawn
    around the bench's, so calibration does not just replay the bench."""
    edits = [
        lambda x: x.resize((max(1, round(x.width * s)), max(1, round(x.height * s))), Image.BICUBIC)
        for s in [rng.uniform(0.4, 0.8)]
    ] + [
        lambda x: jpeg(x, rng.randint(25, 60)),
        lambda x: crop(x, rng.uniform(0.75, 0.95), rng.uniform(-0.03, 0.03), rng.uniform(-0.03, 0.03)),
        flip,
        lambda x: colour(x, rng.uniform(0.8, 1.25), rng.uniform(0.7, 1.5), rng.randint(-15, 15)),
        lambda x: border(x, rng.uniform(0.03, 0.12)),
    ]
    chosen = rng.sample(edits, rng.choice((1, 2)))
    for edit in chosen:
        im = edit(im)
    return im
