"""The edits a web copy of an image goes through: the bench's labelled copies and the
synthetic copies that calibrate a descriptor's threshold on the run's own images."""
from __future__ import annotations

import io
import random

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

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


# The families of the copies the web makes (DISC21's, after AugLy's names), each at the
# strength issue 19 fixes; the random parts (position, angle, colours, words) come from
# `rng`, so a seed gives the same copy every time. `other` is an unrelated photo the
# paste family puts the copy into.
WORDS = ("when the weekend finally arrives", "nobody:", "me at 3am", "LOOK AT THIS", "best day ever",
         "wait for it", "#nofilter #travel", "this is fine", "can't stop laughing", "Monday mood")
SOCIAL_BAR, SOCIAL_TEXT = (250, 250, 250), (38, 38, 38)


def _font(size: int):
    return ImageFont.load_default(size=max(8, size))


def third(im, rng=None, other=None):
    return im.resize((max(1, im.width // 3), max(1, im.height // 3)), Image.BICUBIC)


def jpeg20(im, rng=None, other=None):
    return jpeg(im, 20)


def crop_half(im, rng, other=None):
    """Half the area, off centre: a side fraction of sqrt(0.5), moved up to the edge."""
    side = 0.5 ** 0.5
    room = (1 - side) / 2
    return crop(im, side, rng.uniform(-room, room), rng.uniform(-room, room))


def hflip(im, rng=None, other=None):
    return ImageOps.mirror(im)


def strong_colour(im, rng, other=None):
    im = ImageEnhance.Contrast(im).enhance(rng.choice((0.5, 1.8)))
    im = ImageEnhance.Color(im).enhance(rng.choice((0.3, 2.0)))
    shift = [rng.randint(-40, 40) for _ in range(3)]
    return Image.merge("RGB", [band.point(lambda v, s=s: max(0, min(255, v + s)))
                               for band, s in zip(im.split(), shift)])


def grey(im, rng=None, other=None):
    return ImageOps.grayscale(im).convert("RGB")


def rotate(im, rng, other=None, expand: bool = False):
    angle = rng.uniform(5, 15) * rng.choice((-1, 1))
    return im.rotate(angle, Image.BICUBIC, expand=expand, fillcolor=(0, 0, 0))


def rotate_expand(im, rng, other=None):
    return rotate(im, rng, expand=True)


def aspect(im, rng=None, other=None):
    """Width squeezed to 0.7 of the height's scale."""
    return im.resize((max(1, round(im.width * 0.7)), im.height), Image.BICUBIC)


def padding(im, rng, other=None):
    """A coloured margin of a different width on each side (up to 30 % of the side)."""
    fill = tuple(rng.randint(0, 255) for _ in range(3))
    left, right = (round(im.width * rng.uniform(0.02, 0.3)) for _ in range(2))
    top, bottom = (round(im.height * rng.uniform(0.02, 0.3)) for _ in range(2))
    out = Image.new("RGB", (im.width + left + right, im.height + top + bottom), fill)
    out.paste(im, (left, top))
    return out


def blur(im, rng=None, other=None):
    return im.filter(ImageFilter.GaussianBlur(3))


def pixelate(im, rng=None, other=None):
    small = im.resize((max(1, im.width // 10), max(1, im.height // 10)), Image.BOX)
    return small.resize(im.size, Image.NEAREST)


def _text_box(draw, text, font):
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font, stroke_width=2)
    return right - left, bottom - top


def text(im, rng, other=None):
    """A line of text across the middle, in a random colour."""
    im = im.copy()
    draw = ImageDraw.Draw(im)
    font = _font(im.height // 8)
    words = rng.choice(WORDS)
    w, h = _text_box(draw, words, font)
    fill = tuple(rng.randint(0, 255) for _ in range(3))
    draw.text(((im.width - w) / 2, (im.height - h) / 2), words, font=font, fill=fill,
              stroke_width=2, stroke_fill=(0, 0, 0))
    return im


def meme(im, rng, other=None):
    """White capitals with a black outline, top and bottom."""
    im = im.copy()
    draw = ImageDraw.Draw(im)
    font = _font(im.height // 7)
    for line, y in ((rng.choice(WORDS).upper(), 0.03), (rng.choice(WORDS).upper(), 0.97)):
        w, h = _text_box(draw, line, font)
        top = im.height * y - (h if y > 0.5 else 0)
        draw.text(((im.width - w) / 2, top), line, font=font, fill=(255, 255, 255), stroke_width=3,
                  stroke_fill=(0, 0, 0))
    return im


def _sticker(size: int, rng) -> Image.Image:
    """An emoji-like sticker: a yellow face or a coloured star, with a transparent ground."""
    out = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(out)
    if rng.random() < 0.5:
        draw.ellipse((0, 0, size - 1, size - 1), fill=(255, 204, 0, 255), outline=(120, 80, 0, 255), width=2)
        eye = size // 8
        for x in (0.33, 0.67):
            draw.ellipse((size * x - eye / 2, size * 0.35 - eye / 2, size * x + eye / 2, size * 0.35 + eye / 2),
                         fill=(60, 30, 0, 255))
        draw.arc((size * 0.25, size * 0.35, size * 0.75, size * 0.8), 20, 160, fill=(60, 30, 0, 255),
                 width=max(1, size // 14))
    else:
        colour = tuple(rng.randint(0, 255) for _ in range(3)) + (255,)
        points = [(size / 2 + size / 2 * r * np.cos(a), size / 2 + size / 2 * r * np.sin(a))
                  for a, r in zip(np.linspace(-np.pi / 2, 1.5 * np.pi, 11)[:10], [1, 0.45] * 5)]
        draw.polygon(points, fill=colour, outline=(255, 255, 255, 255))
    return out


def stickers(im, rng, other=None):
    """Two stickers, each about a fifth of the shorter side, anywhere."""
    im = im.copy()
    for _ in range(2):
        size = max(4, round(min(im.size) * rng.uniform(0.18, 0.25)))
        sticker = _sticker(size, rng)
        im.paste(sticker, (rng.randint(0, max(0, im.width - size)), rng.randint(0, max(0, im.height - size))),
                 sticker)
    return im


def paste(im, rng, other=None):
    """The copy at 60 % of the other photo (the larger scale at which it fits 60 % of the
    width or of the height), pasted into it anywhere."""
    if other is None:  # no photo given: a flat backdrop of a random colour
        other = Image.new("RGB", im.size, tuple(rng.randint(0, 255) for _ in range(3)))
    scale = 0.6 * min(other.width / im.width, other.height / im.height)
    small = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.BICUBIC)
    out = other.convert("RGB").copy()
    out.paste(small, (rng.randint(0, out.width - small.width), rng.randint(0, out.height - small.height)))
    return out


def screenshot(im, rng, other=None):
    """A social-media post as a phone shows it: a header bar with an avatar and a name, the
    photo at the post's width, a likes line and a caption under it."""
    width = 360
    photo = im.resize((width, max(1, round(im.height * width / im.width))), Image.BICUBIC)
    header, footer = 48, 70
    out = Image.new("RGB", (width, header + photo.height + footer), SOCIAL_BAR)
    draw = ImageDraw.Draw(out)
    draw.ellipse((8, 8, 40, 40), fill=tuple(rng.randint(0, 255) for _ in range(3)))
    draw.text((50, 14), f"user_{rng.randint(100, 9999)}", font=_font(16), fill=SOCIAL_TEXT)
    out.paste(photo, (0, header))
    y = header + photo.height
    draw.text((10, y + 8), f"Liked by {rng.randint(12, 9999)} people", font=_font(15), fill=SOCIAL_TEXT)
    draw.text((10, y + 34), rng.choice(WORDS) + " #photo", font=_font(14), fill=SOCIAL_TEXT)
    return out


def combination(im, rng, other=None):
    """Flip, off-centre crop to half the area, grey, text across the middle, JPEG q40."""
    return jpeg(text(grey(crop_half(hflip(im), rng)), rng), 40)


FAMILIES = {
    "third": third, "jpeg20": jpeg20, "crop50": crop_half, "flip": hflip, "colour": strong_colour,
    "grey": grey, "rotate": rotate, "rotate_expand": rotate_expand, "aspect": aspect, "padding": padding,
    "blur": blur, "pixelate": pixelate, "text": text, "meme": meme, "stickers": stickers, "paste": paste,
    "screenshot": screenshot, "combination": combination,
}


def web_copy(family: str, im: Image.Image, seed: int, other: Image.Image | None = None) -> Image.Image:
    """The copy of `im` that `family` makes, the same for the same seed."""
    return FAMILIES[family](im.convert("RGB"), random.Random(seed), other)
