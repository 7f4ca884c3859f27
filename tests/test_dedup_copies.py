"""Web copies (data_tools/dedup/copies.py families) found by the shortlist and local-feature
verification (verify.method=local, the default), on generated busy scenes; look-alikes
made by the same edits from other scenes kept."""
from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from helpers import build_shards
from PIL import Image, ImageDraw
from test_dedup import chromium, corrupt_copy, dedup, matches, write_images

from data_tools.dedup import copies, finish, keypoints, scan, views
from data_tools.dedup.config import DedupConfig
from data_tools.dedup.sets import ShardSet, open_set
from data_tools.format import shards


def busy(seed: int, width: int = 240, height: int = 180) -> Image.Image:
    """A scene of many small coloured shapes: corners and blobs for keypoints, like a photo
    has, and a layout that differs from scene to scene only in its details."""
    rng = np.random.default_rng(seed)
    im = Image.new("RGB", (width, height), tuple(int(v) for v in rng.integers(0, 255, 3)))
    draw = ImageDraw.Draw(im)
    for _ in range(60):
        x, y, size = int(rng.integers(0, width)), int(rng.integers(0, height)), int(rng.integers(6, 40))
        colour = tuple(int(v) for v in rng.integers(0, 255, 3))
        shape = rng.integers(0, 3)
        if shape == 0:
            draw.rectangle((x, y, x + size, y + size * 0.6), fill=colour)
        elif shape == 1:
            draw.ellipse((x, y, x + size, y + size), fill=colour)
        else:
            draw.polygon([(x, y), (x + size, y + size // 3), (x + size // 2, y + size)], fill=colour)
    return im


def jpeg(im: Image.Image) -> bytes:
    out = io.BytesIO()
    im.save(out, format="JPEG", quality=95)
    return out.getvalue()


@pytest.mark.parametrize("family", list(copies.FAMILIES))
def test_keypoints_verify_a_copy_of_each_family_and_not_its_look_alike(family):
    # Four draws of the edit: recall is 0.95-1.0 per family on real photos, not 1, so one
    # copy of the four may be missed (a combination draw fits 7 places); no look-alike may pass.
    original, look_alike, backdrop = busy(1), busy(2), busy(3)
    stored = keypoints.features(original)
    found = []
    for seed in (5, 6, 7, 8):
        copy = keypoints.match(keypoints.query_features(copies.web_copy(family, original, seed, backdrop)), *stored)
        other = keypoints.match(keypoints.query_features(copies.web_copy(family, look_alike, seed, backdrop)), *stored)
        found.append((keypoints.is_copy(copy), copy["inliers"]))
        assert not keypoints.is_copy(other), (seed, other["inliers"])
    assert sum(verified for verified, _ in found) >= 3, found


def mounted(im: Image.Image) -> Image.Image:
    """The image in a white passe-partout with a black line and a thin grey edge, as
    photographers show theirs (the grey edge alone kept views.frame_box from cutting)."""
    w, h = im.width + 40, im.height + 40
    out = Image.new("RGB", (w, h), "white")
    out.paste(im, (20, 20))
    draw = ImageDraw.Draw(out)
    draw.rectangle((12, 12, w - 13, h - 13), outline="black", width=2)
    draw.rectangle((0, 0, w - 1, h - 1), outline=(176, 176, 176), width=1)
    return out


def as_scanned(im: Image.Image) -> Image.Image:
    return views.decode(jpeg(im), keypoints.SIDE)


def test_unrelated_photos_in_the_same_mount_are_not_copies_and_a_copy_of_a_mounted_one_is():
    # With keypoints taken anywhere, the mounts' corners match: the pair of seed 11 fits 11
    # inliers spanning 83 % of the image (a real pair, a flute player and a cat, fit 8).
    for seed in range(10, 30):
        stored = keypoints.features(as_scanned(mounted(busy(seed))))
        found = keypoints.match(keypoints.query_features(as_scanned(mounted(busy(seed + 100)))), *stored)
        assert not keypoints.is_copy(found), (seed, found["inliers"], found["cover"])
    original = mounted(busy(11))
    stored = keypoints.features(as_scanned(original))
    for family in ("third", "crop50", "paste", "screenshot", "combination"):
        copy = as_scanned(copies.web_copy(family, original, 5, busy(3)))
        found = keypoints.match(keypoints.query_features(copy), *stored)
        assert keypoints.is_copy(found), (family, found["inliers"], found["cover"])


def screen_pair(family: str) -> tuple[list, np.ndarray, np.ndarray]:
    """Two evaluation images' keypoints, and a copy of the first and the same edit of an
    unrelated scene as the scan decodes them for its views (what the screen looks at)."""
    original, look_alike, backdrop = busy(1), busy(2), busy(3)
    stored = [keypoints.features(original), keypoints.features(busy(4))]
    copy, other = (keypoints.screen_pixels(views.decode(jpeg(copies.web_copy(family, im, 5, backdrop))))
                   for im in (original, look_alike))
    return stored, copy, other


@pytest.mark.parametrize("family", list(copies.FAMILIES))
def test_the_screen_lets_a_copy_of_each_family_through_to_full_verification(family):
    stored, copy, _ = screen_pair(family)
    assert not keypoints.screened_out(copy, stored)


def test_the_screen_turns_away_most_look_alikes_and_is_off_at_zero():
    # A look-alike that gets through is verified in full (and kept there); the screen
    # pays only if most are turned away: 17 of these 18 are.
    turned_away = []
    for family in copies.FAMILIES:
        stored, _, other = screen_pair(family)
        if keypoints.screened_out(other, stored):
            turned_away.append(family)
            assert not keypoints.screened_out(other, stored, least=0)
    assert len(turned_away) >= 16, turned_away


def test_matching_several_candidates_at_once_finds_what_each_alone_finds():
    # One matrix product for all of a training image's shortlist: each candidate's nearest
    # two must stay its own (padding to the longest list never wins), flat ones included.
    query = keypoints.query_features(copies.web_copy("paste", busy(1), 5, busy(3, 320, 240)))
    candidates = [keypoints.features(im) for im in
                  (busy(2), busy(1), Image.new("RGB", (60, 90), (0, 0, 0)), busy(1).crop((0, 0, 120, 60)))]
    together = keypoints.match_all(query, candidates)
    alone = [keypoints.match(query, *candidate) for candidate in candidates]
    assert [f["inliers"] for f in together] == [f["inliers"] for f in alone]
    assert keypoints.is_copy(together[1]) and not keypoints.is_copy(together[0]) and together[2]["inliers"] == 0


def test_the_two_nearest_keypoints_of_each_candidate_are_the_brute_force_ones():
    rng = np.random.default_rng(0)
    query = rng.integers(0, 160, (40, 128)).astype(np.float32)
    descs = [rng.integers(0, 160, (n, 128)).astype(np.uint8) for n in (30, 7, 30, 2)]
    first, second, index = keypoints._two_nearest(query, descs)
    for c, d in enumerate(descs):
        dist = np.linalg.norm(query[:, None] - d[None].astype(np.float32), axis=2)
        ranked = np.sort(dist, axis=1)
        assert np.array_equal(index[:, c], dist.argmin(axis=1))
        assert np.allclose(first[:, c], ranked[:, 0], rtol=1e-4)
        assert np.allclose(second[:, c], ranked[:, 1], rtol=1e-4)


def test_web_copies_are_the_same_for_the_same_seed():
    im, backdrop = busy(1), busy(3)
    for family in copies.FAMILIES:
        first, again = (np.asarray(copies.web_copy(family, im, 9, backdrop)) for _ in range(2))
        assert np.array_equal(first, again), family


def test_keypoint_store_reads_back_what_was_written_memory_mapped(tmp_path):
    written = [keypoints.features(busy(seed)) for seed in (1, 2)]
    store = keypoints.KeypointStore(tmp_path, 2)
    for i, (xy, desc, size) in enumerate(written):
        store.put(i, xy, desc, size)
    store.flush()
    del store
    opened = keypoints.KeypointStore(tmp_path)
    assert isinstance(opened.desc, np.memmap)
    for i, (xy, desc, size) in enumerate(written):
        got_xy, got_desc, got_size = opened.get(i)
        n = min(len(xy), keypoints.FEATURES)
        assert got_size == size and np.array_equal(got_desc, desc[:n])
        assert np.allclose(got_xy, xy[:n], atol=0.25)   # float16 at 256 px


@pytest.fixture(scope="module")
def web_sets(tmp_path_factory):
    """An evaluation set of one busy scene per family and two more; a training set with,
    per family, a copy of its scene and the same edit of an unrelated scene; and the
    uncropped original of an evaluation image that is an 80 % centre crop of it."""
    root = tmp_path_factory.mktemp("web")
    families = list(copies.FAMILIES)
    originals = {f"val_{i:02d}.jpg": busy(100 + i) for i in range(len(families))}
    uncropped = busy(99, 300, 225)
    originals["val_cropped.jpg"] = views.crop(uncropped, 0.8)
    val = root / "val"
    build_shards(write_images(root / "val_imgs", originals), val, "shards.samples=8", "shards.name=val")
    train, expected = {}, {}
    for i, family in enumerate(families):
        backdrop = busy(500 + i)
        train[f"copy_{family}.jpg"] = copies.web_copy(family, originals[f"val_{i:02d}.jpg"], i, backdrop)
        train[f"other_{family}.jpg"] = copies.web_copy(family, busy(300 + i), i, backdrop)
        expected[f"copy_{family}.jpg"] = f"val_{i:02d}.jpg"
    train["uncropped.jpg"] = uncropped
    expected["uncropped.jpg"] = "val_cropped.jpg"
    train_dir = root / "train"
    build_shards(write_images(root / "train_imgs", train), train_dir, "shards.samples=10")
    out = root / "out"
    assert dedup("--train", str(train_dir), "--against", f"val={val}", "--out", str(out)) == 0
    found = {Path(m["train_path"]).name: m for m in matches(out)}
    return {"found": found, "expected": expected, "out": out, "train": train_dir, "val": val, "root": root}


@pytest.mark.parametrize("family", list(copies.FAMILIES))
def test_dedup_finds_the_copy_of_each_family_and_keeps_its_look_alike(web_sets, family):
    found = web_sets["found"]
    assert f"copy_{family}.jpg" in found, sorted(found)
    assert Path(found[f"copy_{family}.jpg"]["eval_path"]).name == web_sets["expected"][f"copy_{family}.jpg"]
    assert f"other_{family}.jpg" not in found


def test_dedup_finds_the_uncropped_original_of_a_cropped_evaluation_image(web_sets):
    assert Path(web_sets["found"]["uncropped.jpg"]["eval_path"]).name == "val_cropped.jpg"


def test_verified_pairs_carry_their_keypoint_lines(web_sets):
    verified = [m for m in web_sets["found"].values() if m["decided"] == "keypoints"]
    assert verified
    for m in verified:
        assert m["inliers"] >= keypoints.MIN_INLIERS and len(m["lines"]) >= min(m["inliers"], 10)
        assert all(len(line) == 4 for line in m["lines"])
    summary = json.loads((web_sets["out"] / "summary.json").read_text())
    assert summary["verify"]["method"] == "local" and summary["verify"]["pairs_aligned"] >= len(verified)


def test_a_corrupt_training_image_is_counted_and_the_copies_still_found(web_sets):
    train = web_sets["root"] / "train_corrupt"
    bad_key = corrupt_copy(web_sets["train"], train)
    out = web_sets["root"] / "out_corrupt"
    assert dedup("--train", str(train), "--against", f"val={web_sets['val']}", "--out", str(out)) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train"]["undecodable"] == 1
    assert summary["train"]["undecodable_examples"][0]["key"] == bad_key
    assert len(matches(out)) >= len(web_sets["found"]) - 1


def test_the_stage_with_the_screen_finds_the_same_copies_and_keeps_the_look_alikes(web_sets):
    out = web_sets["root"] / "out_screen"
    assert dedup("--train", str(web_sets["train"]), "--against", f"val={web_sets['val']}", "--out", str(out),
                 "verify.screen=4") == 0
    found = {Path(m["train_path"]).name: Path(m["eval_path"]).name for m in matches(out)}
    assert found == {name: Path(m["eval_path"]).name for name, m in web_sets["found"].items()}


def test_the_screen_looks_at_the_image_the_scan_decoded_for_its_views(web_sets):
    # The screen pays only if it is cheap: no second decode. The worker that decoded a
    # training image for its views sends the screen's small grey copy along.
    tar = sorted(web_sets["train"].glob("*.tar"))[0]
    result = scan.describe_shard(str(tar), DedupConfig().descriptor, index_side=False, verify="local", screen=True)
    assert len(result["screen"]) == len(result["keys"]) > 0
    for key, pixels in zip(result["keys"], result["screen"]):
        data = dict(shards.iter_samples(tar))[key]["jpg"]
        assert np.array_equal(pixels, keypoints.screen_pixels(views.decode(data)))
        assert max(pixels.shape) == keypoints.SCREEN_SIDE
    for index_side, screen in ((True, True), (False, False)):
        assert scan.describe_shard(str(tar), DedupConfig().descriptor, index_side, verify="local",
                                   screen=screen)["screen"] is None


class CountedSearch:
    """A FAISS index that counts its searches (the real one answers them)."""

    def __init__(self, index):
        self.index, self.ntotal, self.searches = index, index.ntotal, 0

    def search(self, queries, k):
        self.searches += 1
        return self.index.search(queries, k)


def test_the_local_scan_searches_the_index_once_per_shard(web_sets, tmp_path):
    # The shortlist holds each training image's best pair too: a second search for it
    # (as the descriptor-only scan makes) would double the cost that dominates at scale.
    cfg = DedupConfig(train=str(web_sets["train"]), against=[f"val={web_sets['val']}"], out=str(tmp_path),
                      workers=1, progress=False)
    cfg.verify.method = "local"
    index, _, _ = scan.build_index(cfg, [open_set(f"val={web_sets['val']}", "against")],
                                   scan.cached_descriptor(cfg.descriptor), tmp_path / "keypoints")
    index.index = CountedSearch(index.index)
    tar = sorted(web_sets["train"].glob("*.tar"))[0]
    result = scan.describe_shard(str(tar), cfg.descriptor, index_side=False, verify="local")
    found = scan.scan_shard(result, index, 0.92, 5, tar.name, False, cfg.verify)
    assert index.index.searches == 1
    expected = {name: web_sets["expected"][name] for name in web_sets["found"]}
    assert {Path(m["train_path"]).name: Path(m["eval_path"]).name for m in found["matches"]}.items() <= expected.items()
    assert found["matches"]


def lime_pixels(png: Path) -> int:
    rgb = np.asarray(Image.open(png).convert("RGB"), dtype=np.int16)
    return int(((rgb[..., 0] < 60) & (rgb[..., 1] > 200) & (rgb[..., 2] < 60)).sum())


def screenshot(browser: str, page: Path, shot: Path) -> Path:
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={shot}", "--window-size=1200,3000", page.resolve().as_uri()],
                   check=True, capture_output=True, timeout=120)
    return shot


@pytest.mark.slow
@pytest.mark.browser
def test_report_draws_the_matched_keypoints_in_headless_chromium(web_sets, tmp_path):
    browser = chromium()
    if browser is None:
        pytest.skip("chromium is not installed (scripts/install-system-deps.sh installs it as root)")
    report = web_sets["out"] / "report.html"
    with_lines = lime_pixels(screenshot(browser, report, tmp_path / "lines.png"))
    # The same page without the lines: the green pixels were the lines, not the images.
    bare = tmp_path / "bare.html"
    bare.write_text(report.read_text().replace("<line ", "<lost "))
    without = lime_pixels(screenshot(browser, bare, tmp_path / "bare.png"))
    assert with_lines > without + 2000, (with_lines, without)


def row(train: str, against: str, source: str) -> dict:
    return {"train_key": train, "train_path": f"{train}.jpg", "train_shard": "s0.tar", "against": against,
            "eval_key": source, "eval_path": f"{source}.jpg", "eval_shard": "s0.tar", "score": 0.95}


def test_chain_rule_removes_every_image_of_a_component_that_touches_an_evaluation_image():
    # Components of the --self graph (first image <- its self matches): {a, b, c} holds c,
    # a copy of val_1; {d, e} holds none; f is a copy on its own.
    found = [row("c", "val", "val_1"), row("f", "val", "val_2"),
             row("b", "self", "a"), row("c", "self", "a"), row("e", "self", "d")]
    out = finish.chain_matches(found)
    by_key = {m["train_key"]: m for m in out}
    assert set(by_key) == {"a", "b", "c", "e", "f"}
    assert by_key["a"]["against"] == by_key["b"]["against"] == "chain"
    assert by_key["a"]["eval_key"] == by_key["b"]["eval_key"] == "c"     # removed through the copy c
    assert by_key["c"]["against"] == "val" and by_key["f"]["against"] == "val"
    assert by_key["e"]["against"] == "self"                              # d stays, e a plain duplicate


def test_chain_rule_reaches_a_component_through_a_copy_that_is_not_its_first_image(tmp_path):
    """The --self graph's components were built without the copies' own edges: in a chain
    a - b - c whose copy of an evaluation image is b, a and c stayed in the training set."""
    (tmp_path / ".dedup" / "shards").mkdir(parents=True)
    angles = np.radians([0, 20, 40, 90])            # a-b and b-c are near-duplicates, a-c are not; d is alone
    np.save(tmp_path / ".dedup" / "shards" / "s0.tar.npy",
            np.stack([np.cos(angles), np.sin(angles)], 1).astype(np.float32))
    results = [{"keys": ["a", "b", "c", "d"], "paths": ["a.jpg", "b.jpg", "c.jpg", "d.jpg"],
                "matches": [row("b", "val", "val_1")]}]
    train = ShardSet("train", tmp_path, {"shards": [{"file": "s0.tar"}]})
    cfg = DedupConfig(self_dedup=True, components=True)
    found = {m["train_key"]: m["against"] for m in finish.removals(cfg, tmp_path, train, results, threshold=0.9)}
    assert found == {"a": "chain", "b": "val", "c": "chain"}


def test_components_without_self_is_one_clear_error(web_sets, capsys):
    code = dedup("--train", str(web_sets["train"]), "--against", f"val={web_sets['val']}", "--out",
                 str(web_sets["root"] / "out_chain"), "components=true")
    err = capsys.readouterr().err
    assert code != 0 and "components=true needs --self" in err and "Traceback" not in err


def test_components_with_self_reports_the_chains(web_sets):
    out = web_sets["root"] / "out_chains"
    assert dedup("--train", str(web_sets["train"]), "--against", f"val={web_sets['val']}", "--out", str(out),
                 "--self", "components=true") == 0
    summary = json.loads((out / "summary.json").read_text())
    chained = [m for m in matches(out) if m["against"] == "chain"]
    assert summary["self"]["removed_through_chains"] == len({m["train_key"] for m in chained})
    assert "removed through near-duplicate chains" in (out / "report.html").read_text()


def test_a_degenerate_affine_fit_is_implausible_not_a_crash():
    # RANSAC on coincident points returned a non-finite map; SVD of it raised LinAlgError.
    assert not keypoints.plausible(np.full((2, 3), np.nan))
    assert not keypoints.plausible(np.array([[30.0, 0, 0], [0, 30.0, 0]]))     # scaled 30x
    assert not keypoints.plausible(np.array([[1.0, 0, 0], [0, 0.3, 0]]))       # squeezed 3x
    assert keypoints.plausible(np.array([[-0.7, 0.1, 5], [0.1, 0.9, 2]]))      # mirrored, turned
