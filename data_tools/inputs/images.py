"""Turn whatever bytes a user's image file holds into a JPEG every loader can decode.

A sane JPEG (RGB or grey, upright, within size limits) keeps its original bytes: no
generation loss and no encode cost. Anything else that decodes is converted (CMYK → RGB,
EXIF rotation applied, alpha over white, 16-bit scaled to 8, PNG/WebP/... re-encoded).
Anything that does not decode is rejected with a reason the builder counts.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

# We check the pixel count ourselves (with a reason the user can read); PIL's own check
# would raise a bomb error for some sizes and only warn for others.
Image.MAX_IMAGE_PIXELS = None
ImageFile.LOAD_TRUNCATED_IMAGES = False

ORIENTATION = 0x0112


class BadImage(Exception):
    """An image that cannot be used; `reason` is the counter it is filed under."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class ImageRules:
    max_side: int | None = None      # longer side larger than this is downscaled
    max_pixels: int = 89_478_485     # PIL's default bomb limit
    quality: int = 95                # JPEG quality when re-encoding


def prepare(data: bytes, rules: ImageRules) -> tuple[bytes, list[str]]:
    """Return (jpeg bytes, conversions applied). Raises BadImage."""
    if not data:
        raise BadImage("empty_file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL's warnings about odd EXIF/ICC data
            return _prepare(data, rules)
    except BadImage:
        raise
    except UnidentifiedImageError:
        raise BadImage("not_an_image") from None
    except (OSError, SyntaxError, ValueError) as err:
        reason = "truncated" if "truncat" in str(err).lower() else "decode_error"
        raise BadImage(reason, str(err)) from None
    except Exception as err:  # a decoder bug on a hostile file must not stop a build
        raise BadImage("decode_error", f"{type(err).__name__}: {err}") from None


def _prepare(data: bytes, rules: ImageRules) -> tuple[bytes, list[str]]:
    im = Image.open(io.BytesIO(data))
    width, height = im.size
    if width * height > rules.max_pixels:
        raise BadImage("too_many_pixels", f"{width}x{height}")
    if width < 1 or height < 1:
        raise BadImage("decode_error", f"{width}x{height}")
    too_big = rules.max_side is not None and max(width, height) > rules.max_side
    orientation = _orientation(im)
    if im.format == "JPEG" and im.mode in ("RGB", "L") and orientation == 1 and not too_big:
        # Decoding at 1/8 scale still reads every entropy-coded byte, so truncation and
        # corrupt headers are caught at a fraction of the cost of a full decode.
        im.draft(im.mode, (max(1, width // 8), max(1, height // 8)))
        im.load()
        return data, []
    return _reencode(im, rules, orientation, too_big)


def _orientation(im: Image.Image) -> int:
    """The EXIF orientation that is applied (only JPEG's is read)."""
    return im.getexif().get(ORIENTATION, 1) if im.format in ("JPEG", "MPO") else 1


# EXIF orientation -> where a point (x, y) of a W x H image as stored lands once the image
# is turned upright (ImageOps.exif_transpose); 5-8 swap width and height.
TURN = {
    1: lambda x, y, w, h: (x, y),
    2: lambda x, y, w, h: (w - x, y),
    3: lambda x, y, w, h: (w - x, h - y),
    4: lambda x, y, w, h: (x, h - y),
    5: lambda x, y, w, h: (y, x),
    6: lambda x, y, w, h: (h - y, x),
    7: lambda x, y, w, h: (h - y, w - x),
    8: lambda x, y, w, h: (y, w - x),
}


def map_box(box: list[float], before: bytes, after: bytes) -> list[float]:
    """A box [x, y, w, h] in the pixels of the image file as stored (`before`) -> the same
    region in the prepared image (`after`): turned as the EXIF orientation turned the
    image, then scaled as it was shrunk."""
    with Image.open(io.BytesIO(before)) as im:
        (width, height), orientation = im.size, _orientation(im)
    with Image.open(io.BytesIO(after)) as im:
        new_width, new_height = im.size
    turn = TURN.get(orientation, TURN[1])
    x, y, w, h = box
    (x0, y0), (x1, y1) = (turn(px, py, width, height) for px, py in ((x, y), (x + w, y + h)))
    upright = (height, width) if orientation in (5, 6, 7, 8) else (width, height)
    sx, sy = new_width / upright[0], new_height / upright[1]
    return [round(min(x0, x1) * sx, 2), round(min(y0, y1) * sy, 2),
            round(abs(x1 - x0) * sx, 2), round(abs(y1 - y0) * sy, 2)]


def _reencode(im: Image.Image, rules: ImageRules, orientation: int, too_big: bool):
    conversions = []
    if im.format != "JPEG":
        conversions.append("non_jpeg")
    if too_big:
        conversions.append("resized")
        if im.format == "JPEG":
            im.draft(im.mode, _fit(im.size, rules.max_side))  # cheap DCT-domain downscale first
    im.load()
    if orientation != 1:
        im = ImageOps.exif_transpose(im)
        conversions.append("exif_rotated")
    im, how = _to_rgb_or_grey(im)
    if how:
        conversions.append(how)
    if rules.max_side is not None and max(im.size) > rules.max_side:
        im = im.resize(_fit(im.size, rules.max_side), Image.BICUBIC, reducing_gap=3.0)
    out = io.BytesIO()
    im.save(out, format="JPEG", quality=rules.quality)
    return out.getvalue(), conversions


def _to_rgb_or_grey(im: Image.Image) -> tuple[Image.Image, str]:
    if im.mode in ("RGB", "L"):
        return im, ""
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        # convert() would clip 16-bit values at 255 (a white image); scale instead.
        arr = np.asarray(im).astype(np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
        grey = np.clip(arr * (255.0 / top) + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L"), "high_bit_depth"
    if im.mode == "CMYK":
        return im.convert("RGB"), "cmyk"
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB"), "alpha"
    return im.convert("RGB"), "mode_" + im.mode.lower().replace(";", "")


def _fit(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    width, height = size
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))
