"""Bad input never crashes a build and never costs a good sample.

The corpus is generated here, into tmp_path: truncated, empty, text-as-JPEG, PNG/WebP
named .jpg, CMYK, grey, 16-bit, a decompression bomb, EXIF-rotated, missing files,
malformed manifest lines, empty tag lists and tags in odd Unicode.
"""
from __future__ import annotations

import io
import json
import struct
import subprocess
import zlib
from collections import Counter

import numpy as np
import pytest
from helpers import REPO, cli, photo
from PIL import Image

from data_tools.format import shards
from data_tools.format.manifest import BAD_EXAMPLES
from data_tools.format.verify import verify
from data_tools.inputs.images import BadImage, ImageRules, prepare
from data_tools.inputs.sources import ManifestSource

RULES = ImageRules()
ORIENTATION = 0x0112


# -- generators of good and bad files ------------------------------------------------------

def encode(im: Image.Image, fmt: str = "JPEG", **params) -> bytes:
    out = io.BytesIO()
    im.save(out, format=fmt, **params)
    return out.getvalue()


def picture(seed: int = 0, size: tuple[int, int] = (64, 48)) -> Image.Image:
    return photo(np.random.default_rng(seed), *size)


def good_jpeg(seed: int = 0, size: tuple[int, int] = (64, 48)) -> bytes:
    return encode(picture(seed, size), quality=90)


def truncated_jpeg() -> bytes:
    data = good_jpeg(1)
    return data[: len(data) // 2]


def text_file() -> bytes:
    return b"<html>404 not found</html>\nthis is not an image\n"


def png_bytes() -> bytes:
    return encode(picture(2), "PNG")


def webp_bytes() -> bytes:
    return encode(picture(3), "WEBP", quality=90)


def cmyk_source() -> Image.Image:
    return picture(4)


def cmyk_jpeg() -> bytes:
    return encode(cmyk_source().convert("CMYK"), quality=95)


def gray_jpeg() -> bytes:
    return encode(picture(5).convert("L"), quality=90)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png16(arr: np.ndarray) -> bytes:
    """A 16-bit PNG (grey for HxW, RGB for HxWx3), written by hand: no encoder in between."""
    height, width = arr.shape[:2]
    color = 0 if arr.ndim == 2 else 2
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in arr)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, color, 0, 0, 0))
            + png_chunk(b"IDAT", zlib.compress(rows)) + png_chunk(b"IEND", b""))


def gray16_source() -> np.ndarray:
    y, x = np.mgrid[0:40, 0:60]
    return (20000 + 300 * x + 200 * y).astype(np.uint16)  # 20000..40100: every 8-bit clip is 255


def rgb16_source() -> np.ndarray:
    grey = gray16_source()
    return np.stack([grey, grey // 2, 65535 - grey], axis=-1).astype(np.uint16)


def corrupt_png() -> bytes:
    """A PNG whose compressed pixels are garbage (chunk CRC fixed, so only zlib notices)."""
    data = bytearray(encode(picture(8), "PNG"))
    start = data.index(b"IDAT")
    length = struct.unpack(">I", data[start - 4: start])[0]
    for i in range(start + 14, start + 64):
        data[i] ^= 0x55
    data[start + 4 + length: start + 8 + length] = struct.pack(">I", zlib.crc32(bytes(data[start: start + 4 + length])))
    return bytes(data)


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose IHDR claims width x height (CRC fixed): only the header is read."""
    data = bytearray(encode(Image.new("RGB", (8, 8), (10, 200, 30)), "PNG"))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def quadrants(width: int = 64, height: int = 32) -> Image.Image:
    """Four flat colours: any rotation or mirror changes the picture."""
    arr = np.zeros((height, width, 3), np.uint8)
    arr[: height // 2, : width // 2] = (230, 30, 30)
    arr[: height // 2, width // 2:] = (30, 230, 30)
    arr[height // 2:, : width // 2] = (30, 30, 230)
    arr[height // 2:, width // 2:] = (240, 240, 40)
    return Image.fromarray(arr, "RGB")


def exif_rotated_jpeg(orientation: int = 6) -> bytes:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    return encode(quadrants(), quality=95, exif=exif.tobytes())


def rgba_png() -> bytes:
    arr = np.zeros((20, 30, 4), np.uint8)
    arr[..., 0] = 255           # red, but fully transparent
    arr[:, 15:, 3] = 255        # right half opaque red
    return encode(Image.fromarray(arr, "RGBA"), "PNG")


def palette_png() -> bytes:
    return encode(picture(6).convert("P", palette=Image.Palette.ADAPTIVE, colors=32), "PNG")


def decode(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    assert im.format == "JPEG"
    im.load()
    return im


def mean_abs_diff(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).mean())


# -- prepare(): one file at a time ---------------------------------------------------------

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


# -- manifest lines ------------------------------------------------------------------------

def test_manifest_lines_that_cannot_be_used_are_marked(tmp_path):
    jsonl = tmp_path / "tags.jsonl"
    jsonl.write_bytes(b'{"path": "a.jpg", "tags": ["#dog"]}\n'
                      b'{"path": "a.jpg", "tags": ["#dog"]\n'
                      b'{"tags": ["#dog"]}\n'
                      b'{"path": "a.jpg", "tags": 7}\n'
                      b'["a.jpg", "#dog"]\n'
                      b'{"path": "", "tags": ["#dog"]}\n'
                      b'{"path": "b.jpg", "tags": "#dog, #cat"}\n'
                      b'{"path": "c.jpg", "tags": ["#caf\xe9"]}\n'
                      b'\n')
    records = list(ManifestSource(str(jsonl)))
    assert [r.error for r in records] == ["", "malformed_line", "malformed_line", "malformed_line",
                                          "malformed_line", "malformed_line", "", ""]
    assert [r.key for r in records] == [f"{i:012d}" for i in range(8)]
    assert records[0].path == str(tmp_path / "a.jpg")
    assert records[6].tags == ["#dog", "#cat"]
    assert records[7].path == str(tmp_path / "c.jpg") and len(records[7].tags) == 1

    tsv = tmp_path / "tags.tsv"
    tsv.write_text("# path<TAB>tags\nimgs/a.jpg\t#dog,#cat\nimgs/b.jpg\n/abs/c.jpg\t#Café  #dog\n")
    records = list(ManifestSource(str(tsv), root=str(tmp_path / "base")))
    assert [(r.error, r.tags) for r in records] == [("", ["#dog", "#cat"]), ("", []), ("", ["#Café", "#dog"])]
    assert records[0].path == str(tmp_path / "base" / "imgs/a.jpg") and records[2].path == "/abs/c.jpg"


def test_malformed_lines_say_what_is_wrong_with_their_line_number(tmp_path):
    jsonl = tmp_path / "tags.jsonl"
    jsonl.write_text('{"path": "a.jpg", "tags": ["#dog"]}\n\n'
                     '{"file": "a.jpg", "hashtags": ["#dog"]}\n'
                     '{"path": 3, "tags": ["#dog"]}\n'
                     '{"path": "a.jpg", "tags": {"a": 1}}\n'
                     'a.jpg\t#dog\n')
    records = list(ManifestSource(str(jsonl)))
    assert [r.line for r in records] == [1, 3, 4, 5, 6]
    assert [r.detail for r in records] == [
        "", "no 'path' field (fields: file, hashtags)", "'path' is 3, not a file path",
        """'tags' is {"a": 1}, not a list or a string""", "not JSON (Expecting value): 'a.jpg\\t#dog'"]


@pytest.mark.parametrize("suffix", [".jsonl", ".tsv"])
def test_a_byte_order_mark_keeps_the_first_line(tmp_path, suffix):
    manifest = tmp_path / f"tags{suffix}"
    lines = ['{"path": "a.jpg", "tags": ["#dog"]}', '{"path": "b.jpg", "tags": ["#cat"]}']
    if suffix == ".tsv":
        lines = ["a.jpg\t#dog", "b.jpg\t#cat"]
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8-sig")
    records = list(ManifestSource(str(manifest)))
    assert [(r.error, r.path, r.tags) for r in records] == [
        ("", str(tmp_path / "a.jpg"), ["#dog"]), ("", str(tmp_path / "b.jpg"), ["#cat"])]


def build_cli(capsys, *args: str) -> tuple[int, str, str]:
    from launch.cli import main
    code = main(["data", "build", "progress=false", "workers=1", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_manifest_with_other_field_names_names_expected_and_seen(tmp_path, capsys):
    (tmp_path / "imgs").mkdir()
    lines = []
    for i in range(6):
        (tmp_path / "imgs" / f"{i}.jpg").write_bytes(good_jpeg(i))
        lines.append(json.dumps({"file": f"imgs/{i}.jpg", "hashtags": ["#dog"]}))
    lines.insert(2, json.dumps({"path": "imgs/0.jpg", "tags": ["#dog"]}))
    (tmp_path / "tags.jsonl").write_text("\n".join(lines) + "\n")
    code, _, err = build_cli(capsys, f"input.manifest={tmp_path / 'tags.jsonl'}", f"output={tmp_path / 'out'}")
    assert code == 2
    assert err.count("\n") == 1, err
    assert "6 of 7 lines read are not JSON objects with \"path\" (a file) and \"tags\"" in err
    assert "line 1: no 'path' field (fields: file, hashtags); line 2: no 'path'" in err
    assert "line 4: no 'path'" in err and "vocabulary is empty" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name, text, words", [
    ("empty.jsonl", "", "the input has no records (an empty manifest)"),
    ("tags.csv", "path,tags\nimgs/0.jpg,#dog\n", "TSV with a tab between the path and the tags"),
])
def test_an_empty_or_comma_separated_manifest_says_what_a_manifest_is(tmp_path, capsys, name, text, words):
    (tmp_path / name).write_text(text)
    code, _, err = build_cli(capsys, f"input.manifest={tmp_path / name}", f"output={tmp_path / 'out'}")
    assert code == 2 and err.count("\n") == 1 and words in err, err
    assert not (tmp_path / "out").exists()


def test_a_manifest_with_a_few_malformed_lines_still_builds(tmp_path, capsys):
    (tmp_path / "imgs").mkdir()
    lines = []
    for i in range(4):
        (tmp_path / "imgs" / f"{i}.jpg").write_bytes(good_jpeg(i))
        lines.append(json.dumps({"path": f"imgs/{i}.jpg", "tags": ["#dog"]}))
    lines[1] = json.dumps({"path": "imgs/1.jpg", "tags": 5})
    (tmp_path / "tags.jsonl").write_text("\n".join(lines) + "\n")
    code, out, _ = build_cli(capsys, f"input.manifest={tmp_path / 'tags.jsonl'}", f"output={tmp_path / 'out'}")
    assert code == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["num_samples"] == 3 and manifest["dropped"]["malformed_line"] == 1
    assert manifest["bad_examples"] == [{"key": f"{1:012d}", "path": "", "line": 2, "reason": "malformed_line",
                                         "detail": "'tags' is 5, not a list or a string"}]
    assert "bad: manifest line 2 (malformed_line): 'tags' is 5, not a list" in out


@pytest.mark.parametrize("line", ["\t#dog #cat", "\tdog"])
def test_tsv_line_with_an_empty_path_is_malformed(tmp_path, line):
    tsv = tmp_path / "tags.tsv"
    tsv.write_text(f"imgs/a.jpg\t#dog\n{line}\nimgs/b.jpg\t#cat\n")
    records = list(ManifestSource(str(tsv)))
    # Three input lines, three records: the middle one has no path and must be counted.
    assert [r.error for r in records] == ["", "malformed_line", ""], [(r.path, r.tags, r.error) for r in records]


# -- a whole build over the bad corpus, through the CLI -------------------------------------

# (file name, bytes maker or None for a missing file, tags, expected outcome)
# outcome: ("same",) sane JPEG kept as is, ("ok", conversions), ("bad", reason), ("dropped", reason)
DOG, CAFE, CAT = "n02084071", "n02935658", "n02121620"
CASES = [
    ("good1.jpg", lambda: good_jpeg(10), ["#dog"], ("same",)),
    ("truncated.jpg", truncated_jpeg, ["#dog"], ("bad", "truncated")),
    ("good2.jpg", lambda: good_jpeg(11), ["#Cat", "#cats", "#instagood"], ("same",)),
    ("empty.jpg", lambda: b"", ["#dog"], ("bad", "empty_file")),
    ("text.jpg", text_file, ["#tree"], ("bad", "not_an_image")),
    ("png_named.jpg", png_bytes, ["#beach"], ("ok", ["non_jpeg"])),
    ("webp_named.jpg", webp_bytes, ["#car"], ("ok", ["non_jpeg"])),
    ("cmyk.jpg", cmyk_jpeg, ["#flower"], ("ok", ["cmyk"])),
    ("gray.jpg", gray_jpeg, ["#mountain"], ("same",)),
    ("scan16.png", lambda: png16(gray16_source()), ["#dog"], ("ok", ["non_jpeg", "high_bit_depth"])),
    ("bomb.png", bomb_png, ["#dog"], ("bad", "too_many_pixels")),
    ("rotated.jpg", exif_rotated_jpeg, ["#dog"], ("ok", ["exif_rotated"])),
    ("missing.jpg", None, ["#dog"], ("bad", "missing_file")),
    ("good3.jpg", lambda: good_jpeg(12), [], ("dropped", "no_tags")),
    ("good3.jpg", None, ["#xyzzyq", "#qqqzzzxxx"], ("dropped", "no_wordnet_tag")),
    ("unicode.jpg", lambda: good_jpeg(13), ["#\uff24\uff4f\uff47", "#ca\u200bf\u00e9", "#BROWN\u200dBEAR"], ("same",)),
    ("rgba.png", rgba_png, ["#dog"], ("ok", ["non_jpeg", "alpha"])),
    ("palette.png", palette_png, ["#dog"], ("ok", ["non_jpeg", "mode_p"])),
    ("", None, ["#dog"], ("bad", "unreadable_file")),  # the images folder itself
    ("corrupt.png", corrupt_png, ["#dog"], ("bad", "decode_error")),
    ("dogs.jpg", lambda: good_jpeg(14), ["#dog", "#dogs", "#Dog", "#DOGS"], ("same",)),
]
MALFORMED = ['{"path": "imgs/good1.jpg", "tags": ["#dog"]', '{"tags": ["#dog"]}',
             '{"path": "imgs/good1.jpg", "tags": 7}', '["imgs/good1.jpg", "#dog"]']
UNKNOWN_TAGS = 3  # #instagood, #xyzzyq, #qqqzzzxxx


@pytest.fixture(scope="module")
def bad_build(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_corpus")
    (root / "imgs").mkdir()
    lines = []
    for name, make, tags, _ in CASES:
        if make is not None:
            (root / "imgs" / name).write_bytes(make())
        lines.append(json.dumps({"path": f"imgs/{name}", "tags": tags}, ensure_ascii=False))
    lines += MALFORMED
    manifest = root / "tags.jsonl"
    manifest.write_text("\n".join(lines) + "\n\n", encoding="utf-8")
    out = root / "out"
    run = subprocess.run(cli("data", "build", f"input.manifest={manifest}", f"output={out}", "workers=2",
                             "progress=false", "shards.samples=4"),
                         cwd=REPO, capture_output=True, text=True, timeout=180)
    samples = {}
    for tar in sorted(out.glob("*.tar")):
        for key, files in shards.iter_samples(tar):
            assert key not in samples, f"{key} twice"
            samples[key] = (json.loads(files["json"]), files["jpg"])
    return {"root": root, "out": out, "run": run, "samples": samples,
            "manifest": json.loads((out / "manifest.json").read_text()) if (out / "manifest.json").is_file() else None}


def key_of(name: str, outcome: tuple) -> str:
    return next(f"{i:012d}" for i, case in enumerate(CASES) if case[0] == name and case[3] == outcome)


def sample(bad_build, name: str) -> tuple[dict, bytes]:
    case = next(c for c in CASES if c[0] == name)
    return bad_build["samples"][key_of(name, case[3])]


@pytest.mark.slow
def test_build_exits_0(bad_build):
    run = bad_build["run"]
    assert run.returncode == 0, run.stderr
    assert bad_build["manifest"] is not None


@pytest.mark.slow
def test_every_good_sample_is_present_with_its_labels(bad_build):
    vocabulary = [line.split("\t")[1] for line in (bad_build["out"] / "vocabulary.tsv").read_text().splitlines()[1:]]
    good = {f"{i:012d}": case for i, case in enumerate(CASES) if case[3][0] in ("same", "ok")}
    assert set(bad_build["samples"]) == set(good)
    assert bad_build["manifest"]["num_samples"] == len(good)
    expected_synsets = {"#Cat": {CAT}, "#dog": {DOG}, "#\uff24\uff4f\uff47": {DOG, CAFE, "n02132136"}}
    for key, (name, _, tags, _) in good.items():
        meta, _ = bad_build["samples"][key]
        assert meta["tags"] == tags
        assert meta["path"] == str(bad_build["root"] / "imgs" / name)
        assert meta["labels"] and len(meta["labels"]) == len(set(meta["labels"]))
        if tags[0] in expected_synsets:
            assert sorted(meta["labels"]) == sorted(vocabulary.index(s) for s in expected_synsets[tags[0]]), name


@pytest.mark.slow
def test_sane_jpegs_keep_their_bytes(bad_build):
    for name, _, _, outcome in CASES:
        if outcome == ("same",):
            _, jpg = sample(bad_build, name)
            assert jpg == (bad_build["root"] / "imgs" / name).read_bytes(), name


@pytest.mark.slow
def test_converted_images_are_right(bad_build):
    cmyk = decode(sample(bad_build, "cmyk.jpg")[1])
    assert cmyk.mode == "RGB" and mean_abs_diff(cmyk, cmyk_source()) < 12

    scan = np.asarray(decode(sample(bad_build, "scan16.png")[1]), np.float64)
    assert abs(scan.mean() - gray16_source().mean() / 257) < 2

    rotated = decode(sample(bad_build, "rotated.jpg")[1])
    assert rotated.size == (32, 64)
    assert mean_abs_diff(rotated, quadrants().transpose(Image.Transpose.ROTATE_270)) < 6

    for name in ("png_named.jpg", "webp_named.jpg", "rgba.png", "palette.png"):
        im = decode(sample(bad_build, name)[1])
        assert im.mode == "RGB", name


@pytest.mark.slow
def test_bad_and_dropped_are_counted_by_reason(bad_build):
    manifest = bad_build["manifest"]
    bad = Counter(case[3][1] for case in CASES if case[3][0] == "bad")
    assert manifest["bad_samples"] == dict(bad)
    dropped = Counter(case[3][1] for case in CASES if case[3][0] == "dropped")
    dropped["malformed_line"] = len(MALFORMED)
    dropped["tags_not_in_wordnet"] = UNKNOWN_TAGS
    assert {k: v for k, v in manifest["dropped"].items() if v} == dict(dropped)
    converted = Counter(c for case in CASES if case[3][0] == "ok" for c in case[3][1])
    assert manifest["converted"] == dict(converted)
    bad = [(key_of(n, o), o[1]) for n, _, _, o in CASES if o[0] == "bad"]
    malformed = [(f"{len(CASES) + i:012d}", "malformed_line") for i in range(len(MALFORMED))]
    examples = manifest["bad_examples"]
    assert [(e["key"], e["reason"]) for e in examples] == sorted(bad + malformed)[:BAD_EXAMPLES]
    first_malformed = next(e for e in examples if e["reason"] == "malformed_line")
    assert first_malformed["line"] == len(CASES) + 1 and first_malformed["detail"].startswith("not JSON")


@pytest.mark.slow
def test_summary_lists_counts_and_first_bad_paths(bad_build):
    stdout = bad_build["run"].stdout
    assert stdout.startswith(f"{bad_build['manifest']['num_samples']} samples in ")
    assert "bad images: " in stdout and "too_many_pixels=1" in stdout and "truncated=1" in stdout
    assert "dropped records: " in stdout and "malformed_line=4" in stdout
    bad = [(n, o[1]) for n, _, _, o in CASES if o[0] == "bad"]
    for name, reason in bad[:5]:
        assert f"bad: {bad_build['root'] / 'imgs' / name} ({reason})" in stdout


@pytest.mark.slow
def test_output_passes_verify(bad_build):
    assert verify(str(bad_build["out"]), workers=1, progress=False) == []
