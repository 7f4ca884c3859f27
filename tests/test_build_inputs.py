"""`wsl data build` (data_tools/build.py) over bad input never crashes and never costs a good
sample: manifests with other fields or a few malformed lines, and a corpus generated here
into tmp_path: truncated, empty, text-as-JPEG, PNG/WebP named .jpg, CMYK, grey, 16-bit, a
decompression bomb, EXIF-rotated, missing files, empty tag lists and tags in odd Unicode.
"""
from __future__ import annotations

import json
import subprocess
from collections import Counter

import numpy as np
import pytest
from helpers import (
    REPO,
    bomb_png,
    cli,
    cmyk_jpeg,
    cmyk_source,
    corrupt_png,
    decode,
    exif_rotated_jpeg,
    good_jpeg,
    gray16_source,
    gray_jpeg,
    mean_abs_diff,
    palette_png,
    png16,
    png_bytes,
    quadrants,
    rgba_png,
    text_file,
    truncated_jpeg,
    webp_bytes,
)
from PIL import Image

from data_tools.format import shards
from data_tools.format.manifest import BAD_EXAMPLES
from data_tools.format.verify import verify


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
    dropped_line = next(line for line in stdout.splitlines() if line.startswith("dropped records: "))
    assert "tags_not_in_wordnet" not in dropped_line   # tags, not records: a line of their own
    assert f"hashtags not in WordNet: {UNKNOWN_TAGS}, left out of their images' labels" in stdout
    bad = [(n, o[1]) for n, _, _, o in CASES if o[0] == "bad"]
    for name, reason in bad[:5]:
        assert f"bad: {bad_build['root'] / 'imgs' / name} ({reason})" in stdout


@pytest.mark.slow
def test_output_passes_verify(bad_build):
    assert verify(str(bad_build["out"]), workers=1, progress=False) == []


def test_unknown_hashtags_are_not_reported_as_dropped_records():
    from data_tools.format.manifest import summary
    manifest = {"num_samples": 168, "num_shards": 2, "num_classes": 67, "label_type": "multi",
                "dropped": {"tags_not_in_wordnet": 18, "no_wordnet_tag": 0}, "bad_samples": {"truncated": 1},
                "converted": {}, "bad_examples": []}
    lines = summary(manifest).splitlines()
    assert not any(line.startswith("dropped records") for line in lines)   # every record was kept
    assert "hashtags not in WordNet: 18, left out of their images' labels" in lines[-1]
