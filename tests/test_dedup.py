"""`wsl data dedup` on generated photos: copies found, unrelated kept, outputs sound."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from helpers import build_shards, photo
from PIL import Image

from data_tools.dedup import copies, search
from data_tools.dedup.report import LINE_COLOUR
from data_tools.format import shards
from data_tools.format.verify import verify
from launch.cli import main

EDITS = ["half", "jpeg30", "crop80", "flip", "colour", "border"]
SIZE = (200, 150)


def write_images(root: Path, images: dict[str, Image.Image]) -> Path:
    """JPEGs under root and a JSONL manifest naming them, every image tagged #dog."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "tags.jsonl", "w") as f:
        for name, im in images.items():
            im.save(root / name, quality=92)
            f.write(json.dumps({"path": name, "tags": ["#dog"]}) + "\n")
    return root / "tags.jsonl"


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """An evaluation set of 12 photos; a training set of 24 unrelated photos, one edited
    copy of each of the first six evaluation photos and an exact copy of the seventh."""
    root = tmp_path_factory.mktemp("dedup")
    rng = np.random.default_rng(7)
    originals = {f"val_{i:02d}.jpg": photo(rng, *SIZE) for i in range(12)}
    val = root / "val"
    build_shards(write_images(root / "val_imgs", originals), val, "shards.samples=5", "shards.name=val")
    train_images = {f"other_{i:02d}.jpg": photo(rng, *SIZE) for i in range(24)}
    expected = {}
    for i, edit in enumerate(EDITS):
        name = f"copy_{edit}.jpg"
        train_images[name] = copies.EDITS[edit](originals[f"val_{i:02d}.jpg"])
        expected[name] = f"val_{i:02d}.jpg"
    train_images["copy_exact.jpg"] = originals["val_06.jpg"]
    expected["copy_exact.jpg"] = "val_06.jpg"
    train = root / "train"
    build_shards(write_images(root / "train_imgs", train_images), train, "shards.samples=8")
    return {"root": root, "val": val, "train": train, "expected": expected}


def dedup(*args: str, workers: int = 1) -> int:
    return main(["data", "dedup", *args, "progress=false", f"workers={workers}"])


def matches(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "matches.jsonl").read_text().splitlines()]


def keys_of(directory: Path) -> set[str]:
    manifest = shards.read_manifest(directory)
    return {key for e in manifest["shards"] for key, _ in shards.iter_samples(directory / e["file"])}


@pytest.fixture(scope="module")
def one_run(sets):
    out = sets["root"] / "out"
    code = dedup("--train", str(sets["train"]), "--against", f"val={sets['val']}", "--out", str(out),
                 "--apply", str(sets["root"] / "filtered"))
    assert code == 0
    return out


def test_copies_found_unrelated_kept(sets, one_run):
    found = {Path(m["train_path"]).name: Path(m["eval_path"]).name for m in matches(one_run)}
    assert found == sets["expected"]
    assert all(m["against"] == "val" for m in matches(one_run))
    summary = json.loads((one_run / "summary.json").read_text())
    assert summary["removed"] == len(sets["expected"])
    assert summary["against"][0]["matched_train_samples"] == len(sets["expected"])
    assert summary["calibration"]["recall"] > 0.5 and summary["calibration"]["precision"] is not None


def test_apply_passes_verify_and_lacks_exactly_the_removed(sets, one_run):
    filtered = sets["root"] / "filtered"
    assert verify(str(filtered), workers=1, progress=False) == []
    removed = {m["train_key"] for m in matches(one_run)}
    assert len(removed) == len(sets["expected"])
    assert keys_of(filtered) == keys_of(sets["train"]) - removed
    record = shards.read_manifest(filtered)["dedup"]
    val_manifest = shards.read_manifest(sets["val"])
    assert record["against"] == [{"name": "val", "directory": str(sets["val"].resolve()),
                                  "fingerprint": shards.fingerprint(val_manifest), "num_samples": 12}]
    assert record["removed"] == len(removed) and record["self"] is False
    assert record["descriptor"].startswith("dct") and 0 < record["threshold"] < 1
    assert set(record["calibration"]) == {"precision", "recall"}


def test_parts_merged_equal_one_run(sets, one_run):
    out = sets["root"] / "parts"
    common = ["--train", str(sets["train"]), "--against", f"val={sets['val']}", "--out", str(out)]
    assert dedup(*common, "--part", "0/2") == 0
    assert not (out / "matches.jsonl").exists()  # part 1/2 is still to come
    # A part's keypoint store (3 GB at 92k evaluation images) is scratch for its scan: 64
    # parts kept 200 GB in --out. One killed mid-scan leaves its store; the merge sweeps it.
    assert not list((out / ".dedup").glob("keypoints.part*"))
    (out / ".dedup" / "keypoints.part5").mkdir()
    (out / ".dedup" / "keypoints.part5" / "keypoints_desc.u8").write_bytes(b"left by a killed part")
    assert dedup(*common, "--part", "1/2", workers=2) == 0  # worker processes, forked after FAISS ran
    assert dedup(*common, "--merge") == 0
    assert (out / "matches.jsonl").read_text() == (one_run / "matches.jsonl").read_text()
    assert not list((out / ".dedup").glob("keypoints.part*")) and not list((one_run / ".dedup").glob("keypoints*"))


def test_merge_before_all_parts_is_one_clear_error(sets, capsys):
    out = sets["root"] / "early_merge"
    common = ["--train", str(sets["train"]), "--against", str(sets["val"]), "--out", str(out)]
    assert dedup(*common, "--part", "0/3") == 0
    assert "2 shard(s) of other parts still to scan" in capsys.readouterr().err
    assert dedup(*common, "--merge") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not scanned yet" in err[0]


def test_reused_out_with_other_settings_refused(sets, one_run, capsys):
    code = dedup("--train", str(sets["train"]), "--against", f"val={sets['val']}", "--out", str(one_run),
                 "threshold=0.5")
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "another dedup run, begun with threshold=null; give those to resume it" in err[0]
    other = sets["root"] / "other_train"
    shutil.copytree(sets["val"], other)   # another training set: no setting resumes the run
    assert dedup("--train", str(other), "--against", f"val={sets['val']}", "--out", str(one_run)) == 2
    assert "another dedup run (other train set); choose an empty --out directory" in capsys.readouterr().err


def test_an_out_begun_with_the_old_search_defaults_says_how_to_resume(sets, tmp_path, capsys):
    # Before search.index=auto, a run recorded flat, nlist 1024, nprobe 32: the message
    # gives the overrides that resume it, and with them it does.
    out = tmp_path / "out"
    common = ["--train", str(sets["train"]), "--against", f"val={sets['val']}", "--out", str(out)]
    old = ["search.index=flat", "search.nlist=1024", "search.nprobe=32"]
    assert dedup(*common, *old) == 0
    first = (out / "matches.jsonl").read_text()
    max((out / ".dedup" / "shards").glob("*.json")).unlink()   # as if stopped before its last shard
    assert dedup(*common) == 2
    err = capsys.readouterr().err
    assert "begun with search.index=flat search.nlist=1024 search.nprobe=32; give those to resume it" in err
    assert dedup(*common, *old) == 0
    assert (out / "matches.jsonl").read_text() == first


def corrupt_copy(train: Path, dest: Path) -> str:
    """The training set with one image's bytes replaced by garbage; returns its key."""
    shutil.copytree(train, dest)
    manifest = shards.read_manifest(dest)
    entry = manifest["shards"][0]
    samples = [(key, files["jpg"], json.loads(files["json"])) for key, files in shards.iter_samples(dest / entry["file"])]
    bad_key = samples[1][0]
    samples[1] = (bad_key, b"\xff\xd8\xff\xe0 not really a jpeg", samples[1][2])
    entry.update(shards.write_shard(dest / entry["file"], samples))
    shards.write_json(dest / "manifest.json", manifest)
    return bad_key


def test_corrupt_image_counted_and_left_out(sets):
    train = sets["root"] / "train_corrupt"
    bad_key = corrupt_copy(sets["train"], train)
    out, filtered = sets["root"] / "out_corrupt", sets["root"] / "filtered_corrupt"
    assert dedup("--train", str(train), "--against", str(sets["val"]), "--out", str(out),
                 "--apply", str(filtered)) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train"]["undecodable"] == 1
    assert summary["train"]["undecodable_examples"][0]["key"] == bad_key
    assert verify(str(filtered), workers=1, progress=False) == []
    assert bad_key not in keys_of(filtered)
    assert shards.read_manifest(filtered)["bad_samples"]["undecodable"] == 1


def test_self_dedup_keeps_one_per_component(tmp_path, sets):
    rng = np.random.default_rng(11)
    twin = photo(rng, *SIZE)
    images = {f"u_{i:02d}.jpg": photo(rng, *SIZE) for i in range(10)}
    images.update({"twin_a.jpg": twin, "twin_b.jpg": copies.half(twin), "twin_c.jpg": copies.flip(copies.flip(twin))})
    train = tmp_path / "train"
    build_shards(write_images(tmp_path / "imgs", images), train, "shards.samples=4")
    out = tmp_path / "out"
    assert dedup("--train", str(train), "--against", str(sets["val"]), "--out", str(out), "--self") == 0
    found = matches(out)
    assert {m["against"] for m in found} == {"self"}
    # one twin stays (the first in shard order, which the build's hash order decides)
    removed = sorted(Path(m["train_path"]).name for m in found)
    (kept,) = {Path(m["eval_path"]).name for m in found}
    assert len(removed) == 2 and sorted([*removed, kept]) == ["twin_a.jpg", "twin_b.jpg", "twin_c.jpg"]


@pytest.mark.parametrize("args, words", [
    ([], "--against"),
    (["--against", "/nonexistent/val"], "no such directory"),
    (["--against", "EMPTY"], "holds no samples"),
    (["--against", "VAL", "threshold=2"], "threshold"),
    (["--against", "VAL", "calibration.images=0"], "calibration.images"),
    (["--against", "VAL", "search.nprobe=0"], "search.nprobe"),
    (["--against", "VAL", "search.nlist=0"], "search.nlist"),
    (["--against", "VAL", "search.index=hnsw"], "search.index"),
    (["--against", "VAL", "descriptor.block=64"], "descriptor.block"),
    (["--against", "VAL", "descriptor.name=learned"], "descriptor.checkpoint"),
    (["--against", "VAL", "descriptor.name=learned", "descriptor.checkpoint=/nonexistent.pt"], "not found"),
    (["--against", "VAL", "--against", "VAL"], "distinct names"),
    (["--against", "VAL", "--part", "2/2"], "part"),
    (["--against", "VAL", "--apply", "NONEMPTY"], "not empty"),
])
def test_bad_input_is_one_clear_error(sets, tmp_path, capsys, args, words):
    empty = tmp_path / "empty"
    empty.mkdir()
    manifest = shards.read_manifest(sets["val"])
    shards.write_json(empty / "manifest.json", {**manifest, "shards": [], "num_samples": 0, "num_shards": 0})
    nonempty = tmp_path / "nonempty"
    nonempty.mkdir()
    (nonempty / "precious.txt").write_text("not ours")
    named = {"VAL": sets["val"], "EMPTY": empty, "NONEMPTY": nonempty}
    args = [str(named.get(a, a)) for a in args]
    code = dedup("--train", str(sets["train"]), "--out", str(tmp_path / "out"), *args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and words in err[0], err


def test_an_out_that_is_a_file_is_one_clear_error(sets, tmp_path, capsys):
    (tmp_path / "out").write_text("a file")
    code = dedup("--train", str(sets["train"]), "--against", str(sets["val"]), "--out", str(tmp_path / "out"))
    assert code == 2 and "is a file; give a directory" in capsys.readouterr().err


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


BLANK_GIF = "data:image/gif;base64,R0lGODlhAQABAIAAAP///wAAACH5BAEAAAAALAAAAAABAAEAAAICRAEAOw=="  # 1x1 white


def colourful_share(png: Path) -> float:
    """Share of pixels with clear colour: thumbnails of photos have it, text and page do not."""
    hsv = np.asarray(Image.open(png).convert("RGB").convert("HSV"), dtype=np.int16)
    return float(((hsv[..., 1] > 60) & (hsv[..., 2] > 40)).mean())


@pytest.mark.slow
@pytest.mark.browser
def test_report_opens_in_headless_chromium_and_shows_the_pairs(sets, one_run, tmp_path):
    browser = chromium()
    if browser is None:
        pytest.skip("chromium is not installed (scripts/install-system-deps.sh installs it as root)")
    report = one_run / "report.html"
    page = report.read_text()
    assert page.count("data:image/jpeg;base64,") >= 2 * len(sets["expected"])
    shot = tmp_path / "report.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={shot}", "--window-size=1000,2400", report.resolve().as_uri()],
                   check=True, capture_output=True, timeout=120)
    assert colourful_share(shot) > 0.03
    # The same page with every thumbnail a blank one (a broken one draws a coloured icon)
    # and the keypoint lines grey shows no such colour: the pixels are the images.
    bare = tmp_path / "bare.html"
    bare.write_text(re.sub(r"data:image/jpeg;base64,[A-Za-z0-9+/=]+", BLANK_GIF, page).replace(LINE_COLOUR, "#808080"))
    blank = tmp_path / "bare.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={blank}", "--window-size=1000,2400", bare.as_uri()],
                   check=True, capture_output=True, timeout=120)
    assert colourful_share(blank) < 0.005


def tiny_checkpoints(tmp_path: Path) -> dict[str, tuple[Path, list[str]]]:
    """The kinds of local checkpoint the learned descriptor reads, with random weights."""
    import torch
    import torchvision

    from pretrain import checkpoint
    from pretrain.backbone import export
    from pretrain.models import build_model

    backbone = export(build_model("resnext_tiny", 5).state_dict(), "resnext_tiny", {}, tmp_path / "backbone.pt")
    run = checkpoint.save({"model": build_model("resnext_tiny", 5).state_dict(),
                           "config": {"model": {"name": "resnext_tiny"}}}, tmp_path, 8, 1)
    net = torchvision.models.resnet18(weights=None)
    torch.save(net.state_dict(), tmp_path / "resnet18.pth")
    scripted = torch.jit.script(torch.nn.Sequential(net.conv1, net.bn1, net.relu, net.layer1).eval())
    scripted.save(str(tmp_path / "sscd_like.torchscript.pt"))
    return {"backbone": (backbone, []),
            "pretrain_checkpoint": (run, []),
            "torchvision": (tmp_path / "resnet18.pth", ["descriptor.arch=resnet18"]),
            "torchscript": (tmp_path / "sscd_like.torchscript.pt", [])}


@pytest.mark.parametrize("kind", ["backbone", "pretrain_checkpoint", "torchvision", "torchscript"])
def test_learned_descriptor_from_local_checkpoint(sets, tmp_path, kind):
    # About reading each kind of checkpoint: the descriptor alone decides (the default's
    # shortlist views through a network took 13-21 s a test; the next test runs it once).
    path, extra = tiny_checkpoints(tmp_path)[kind]
    out = tmp_path / "out"
    assert dedup("--train", str(sets["train"]), "--against", f"val={sets['val']}", "--out", str(out),
                 "descriptor.name=learned", f"descriptor.checkpoint={path}", "descriptor.size=32", *extra,
                 "verify.method=off") == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["descriptor"] == f"learned:{path.name}"
    assert summary["calibration"]["threshold_source"] == "calibrated"
    exact = [m for m in matches(out) if Path(m["train_path"]).name == "copy_exact.jpg"]
    assert exact and exact[0]["eval_path"].endswith("val_06.jpg") and exact[0]["score"] > 0.999


@pytest.mark.slow
def test_a_learned_descriptor_feeds_the_default_shortlist(sets, tmp_path):
    path, _ = tiny_checkpoints(tmp_path)["torchscript"]
    out = tmp_path / "out"
    assert dedup("--train", str(sets["train"]), "--against", f"val={sets['val']}", "--out", str(out),
                 "descriptor.name=learned", f"descriptor.checkpoint={path}", "descriptor.size=32") == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["descriptor"] == f"learned:{path.name}" and summary["verify"]["method"] == "local"
    exact = [m for m in matches(out) if Path(m["train_path"]).name == "copy_exact.jpg"]
    assert exact and exact[0]["eval_path"].endswith("val_06.jpg") and exact[0]["decided"] is not None


def test_state_dict_of_another_architecture_is_one_clear_error(sets, tmp_path, capsys):
    path, _ = tiny_checkpoints(tmp_path)["torchvision"]
    code = dedup("--train", str(sets["train"]), "--against", str(sets["val"]), "--out", str(tmp_path / "out"),
                 "descriptor.name=learned", f"descriptor.checkpoint={path}", "descriptor.arch=resnet50")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "does not fit torchvision's resnet50" in err[0]


def test_truncated_shard_is_one_clear_error(sets, tmp_path, capsys):
    train = tmp_path / "train"
    shutil.copytree(sets["train"], train)
    tar = train / shards.read_manifest(train)["shards"][1]["file"]
    tar.write_bytes(tar.read_bytes()[:1500])
    code = dedup("--train", str(train), "--against", str(sets["val"]), "--out", str(tmp_path / "out"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "unreadable shard" in err[0] and tar.name in err[0]


def test_report_caps_the_pairs_and_says_so(sets, tmp_path):
    out = tmp_path / "out"
    assert dedup("--train", str(sets["train"]), "--against", str(sets["val"]), "--out", str(out),
                 "report_pairs=2", "near_misses=1") == 0
    page = (out / "report.html").read_text()
    assert f"Showing the 2 highest-scoring of {len(sets['expected'])} matches" in page
    assert page.count("data:image/jpeg;base64,") == 2 * (2 + 1)
    assert len(matches(out)) == len(sets["expected"])  # the cap is the page's, not the results'


def test_interrupted_run_resumes_from_its_finished_shards(sets, one_run, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(one_run, out)
    done = sorted((out / ".dedup" / "shards").glob("*.json"))
    done[-1].unlink()  # as if stopped before the last shard
    kept = {p: p.stat().st_mtime_ns for p in done[:-1]}
    assert dedup("--train", str(sets["train"]), "--against", f"val={sets['val']}", "--out", str(out)) == 0
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())  # finished shards not redone
    assert (out / "matches.jsonl").read_text() == (one_run / "matches.jsonl").read_text()


def test_the_default_verifies_by_local_features_and_says_so(sets, one_run, capsys):
    # The default was the descriptor alone (verify.enabled=false), which misses most web
    # copies (docs/benchmarks.md, "Web copies"); a user running the stage bare gets the
    # shortlist and keypoint verification now, and the console line names the method.
    summary = json.loads((one_run / "summary.json").read_text())
    assert summary["verify"]["method"] == "local" and summary["verify"]["pairs_aligned"] > 0
    assert "Local-feature verification on" in (one_run / "report.html").read_text()
    record = shards.read_manifest(sets["root"] / "filtered")["dedup"]
    assert record["verify"]["method"] == "local" and record["verify"]["min_inliers"] == summary["verify"]["min_inliers"]
    out = sets["root"] / "said"
    assert dedup("--train", str(sets["train"]), "--against", str(sets["val"]), "--out", str(out)) == 0
    said = capsys.readouterr().out
    assert f"{len(sets['expected'])} of {summary['train']['samples']} training samples match" in said
    assert "verify.method=local" in said and "shortlisted pairs verified by local features" in said


def test_the_descriptor_alone_is_still_a_choice_and_the_old_key_one_clear_error(sets, tmp_path, capsys):
    common = ["--train", str(sets["train"]), "--against", str(sets["val"])]
    assert dedup(*common, "--out", str(tmp_path / "off"), "verify.method=off") == 0
    assert "verify.method=off: the descriptor alone, threshold 0.9" in capsys.readouterr().out
    summary = json.loads((tmp_path / "off" / "summary.json").read_text())
    assert summary["verify"]["method"] == "off" and summary["verify"]["pairs_aligned"] == 0
    assert "Second look off" in (tmp_path / "off" / "report.html").read_text()
    assert dedup(*common, "--out", str(tmp_path / "old"), "verify.enabled=true") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["wsl: error: config key 'verify.enabled' is now 'verify.method' (one of local, align, off)"]


def test_an_out_begun_before_verify_method_resumes_with_the_same_method(sets, tmp_path, capsys):
    # Its settings.json says verify.enabled=false (the old default): the descriptor alone,
    # which is verify.method=off now; the new default is another run, refused by name.
    out = tmp_path / "out"
    common = ["--train", str(sets["train"]), "--against", f"val={sets['val']}", "--out", str(out)]
    assert dedup(*common, "verify.method=off") == 0
    first = (out / "matches.jsonl").read_text()
    settings = json.loads((out / ".dedup" / "settings.json").read_text())
    settings["verify"] = {"enabled": False, **settings["verify"], "method": "align"}
    shards.write_json(out / ".dedup" / "settings.json", settings)
    max((out / ".dedup" / "shards").glob("*.json")).unlink()   # as if stopped before its last shard
    assert dedup(*common) == 2
    assert "another dedup run, begun with verify.method=off" in capsys.readouterr().err
    assert dedup(*common, "verify.method=off") == 0
    assert (out / "matches.jsonl").read_text() == first


def test_the_run_records_the_index_it_built(sets, one_run):
    facts = json.loads((one_run / ".dedup" / "calibration.json").read_text())
    assert facts["index"]["kind"] == "flat" and facts["index"]["views"] <= search.FLAT_UP_TO


def test_an_inverted_file_run_finds_the_copies(sets, tmp_path, capsys):
    """search.index=ivf on a set far below search.FLAT_UP_TO: the derived nlist and nprobe hold
    and find what exact search finds; the build, which has no bar, says what it does."""
    out = tmp_path / "out"
    assert dedup("--train", str(sets["train"]), "--against", f"val={sets['val']}", "--out", str(out),
                 "search.index=ivf", "search.nprobe=2") == 0
    facts = json.loads((out / ".dedup" / "calibration.json").read_text())
    assert facts["index"]["kind"] == "ivf" and facts["index"]["nprobe"] == 2
    assert f"views into an inverted file of {facts['index']['nlist']:,} cells" in capsys.readouterr().err
    assert {Path(m["train_path"]).name: Path(m["eval_path"]).name for m in matches(out)} == sets["expected"]


def test_frame_is_cut_back_to_the_image():
    from data_tools.dedup import views
    rng = np.random.default_rng(3)
    im = photo(rng, 160, 120)
    framed = copies.border(im, 0.1)            # 16 px of black on every side, image shrunk inside
    cut = views.cut_border(framed)
    slack = 2 * views.BLEND + 1                 # the blended rows go with the frame, on both sides
    assert abs(cut.width - 128) <= slack and abs(cut.height - 88) <= slack
    assert views.cut_border(im).size == im.size  # a photo without a frame is left whole


def test_paths_yaml_would_misread_and_paths_with_equals_are_taken_as_given(sets, tmp_path, monkeypatch):
    # --train 2024_01 once read 202401, --out 0755 wrote to 493 (YAML numbers), and no
    # path holding "=" could be given to --against, even as NAME=PATH.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "2024_01").symlink_to(sets["train"])
    (tmp_path / "run=3").mkdir()
    (tmp_path / "run=3" / "val").symlink_to(sets["val"])
    val = tmp_path / "run=3" / "val"
    code = dedup("--train", "2024_01", "--against", str(val), "--against", f"again={val}", "--out", "0755")
    assert code == 0
    summary = json.loads((tmp_path / "0755" / "summary.json").read_text())
    assert summary["train"]["directory"] == "2024_01"
    assert [a["name"] for a in summary["against"]] == ["val", "again"]
    assert summary["removed"] == len(sets["expected"])
