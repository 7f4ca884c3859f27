"""data_tools/inputs/images.py: prepare() takes one file at a time; a bad one is refused with its
reason, any other format or colour model becomes an RGB JPEG with the same picture."""
from __future__ import annotations

import io

import numpy as np
import pytest
from helpers import (
    ORIENTATION,
    bomb_png,
    cmyk_jpeg,
    cmyk_source,
    corrupt_png,
    decode,
    encode,
    exif_rotated_jpeg,
    good_jpeg,
    gray16_source,
    gray_jpeg,
    mean_abs_diff,
    palette_png,
    picture,
    png16,
    png_bytes,
    quadrants,
    rgba_png,
    text_file,
    truncated_jpeg,
    webp_bytes,
)
from PIL import Image

from data_tools.inputs.images import BadImage, ImageRules, prepare

RULES = ImageRules()


def rgb16_source() -> np.ndarray:
    grey = gray16_source()
    return np.stack([grey, grey // 2, 65535 - grey], axis=-1).astype(np.uint16)


@pytest.mark.parametrize("make, reason", [
    (truncated_jpeg, "truncated"),
    (lambda: b"", "empty_file"),
    (text_file, "not_an_image"),
    (bomb_png, "too_many_pixels"),
    (lambda: b"\xff\xd8\xff\xe0" + b"\x00" * 300, "not_an_image"),
    (corrupt_png, "decode_error"),
])
def test_bad_file_is_rejected_with_its_reason(make, reason):
    with pytest.raises(BadImage) as err:
        prepare(make(), RULES)
    assert err.value.reason == reason


def test_jpeg_cut_inside_its_header_is_filed_as_truncated():
    data = good_jpeg()
    with pytest.raises(BadImage) as err:
        prepare(data[:200], RULES)  # cut before the scan: PIL says "Truncated File Read"
    assert err.value.reason == "truncated", str(err.value)


def test_pixel_limit_comes_from_the_rules():
    with pytest.raises(BadImage, match="too_many_pixels"):
        prepare(encode(picture(0, (64, 48)), "PNG"), ImageRules(max_pixels=64 * 48 - 1))
    assert prepare(encode(picture(0, (64, 48)), "PNG"), ImageRules(max_pixels=64 * 48))[0]


@pytest.mark.parametrize("make", [good_jpeg, gray_jpeg])
def test_sane_jpeg_keeps_its_bytes(make):
    data = make()
    assert prepare(data, RULES) == (data, [])


@pytest.mark.parametrize("make", [png_bytes, webp_bytes])
def test_other_formats_are_reencoded(make):
    data = make()
    out, conversions = prepare(data, RULES)
    assert conversions == ["non_jpeg"]
    im = decode(out)
    assert im.mode == "RGB" and im.size == (64, 48)
    assert mean_abs_diff(im, Image.open(io.BytesIO(data)).convert("RGB")) < 8


def test_cmyk_becomes_rgb_with_the_same_colours():
    out, conversions = prepare(cmyk_jpeg(), RULES)
    assert conversions == ["cmyk"]
    im = decode(out)
    assert im.mode == "RGB"
    assert mean_abs_diff(im, cmyk_source()) < 12


def test_16_bit_grey_png_is_scaled_not_clipped():
    source = gray16_source()
    out, conversions = prepare(png16(source), RULES)
    assert "high_bit_depth" in conversions and "non_jpeg" in conversions
    arr = np.asarray(decode(out), np.float64)
    assert arr.shape == source.shape
    assert abs(arr.mean() - source.mean() / 257) < 2   # ~127, not a saturated 255
    assert arr.max() < 200


def test_16_bit_rgb_png_is_scaled_not_clipped():
    source = rgb16_source()
    out, conversions = prepare(png16(source), RULES)
    assert "non_jpeg" in conversions
    arr = np.asarray(decode(out), np.float64)
    assert arr.shape == source.shape
    assert np.abs(arr.mean(axis=(0, 1)) - source.mean(axis=(0, 1)) / 257).max() < 3


def test_exif_orientation_is_applied():
    out, conversions = prepare(exif_rotated_jpeg(6), RULES)
    assert conversions == ["exif_rotated"]
    im = decode(out)
    assert im.size == (32, 64)  # 64x32 stored, shown rotated
    assert im.getexif().get(ORIENTATION, 1) == 1  # no viewer rotates it a second time
    assert mean_abs_diff(im, quadrants().transpose(Image.Transpose.ROTATE_270)) < 6
    assert mean_abs_diff(im, quadrants().transpose(Image.Transpose.ROTATE_90)) > 60


def test_alpha_is_composed_over_white():
    out, conversions = prepare(rgba_png(), RULES)
    assert conversions == ["non_jpeg", "alpha"]
    im = decode(out)
    assert im.mode == "RGB"
    assert min(im.getpixel((3, 10))) > 240                     # transparent: white
    r, g, b = im.getpixel((26, 10))
    assert r > 230 and g < 25 and b < 25                       # opaque: red


def test_palette_png_becomes_rgb():
    out, conversions = prepare(palette_png(), RULES)
    assert conversions == ["non_jpeg", "mode_p"]
    assert decode(out).mode == "RGB"


@pytest.mark.parametrize("size", [(120, 90), (128, 96)])
def test_max_side_downscale_is_recorded_as_resized(size):
    out, conversions = prepare(good_jpeg(7, size), ImageRules(max_side=64))
    im = decode(out)
    assert max(im.size) == 64
    # 128x96 is brought to 64x48 by the JPEG decoder's 1/2 draft alone: still a resize.
    assert conversions == ["resized"], conversions
