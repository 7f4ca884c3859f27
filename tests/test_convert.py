"""`wsl data convert` (data_tools/convert/__init__.py), the command: converts, verifies,
resumes, merges parts, skips corrupt images and says what is wrong with its input in one line."""
from __future__ import annotations

import pytest
from helpers import assert_verifies, cub_tree, imagenet_train, replace_line, run_cli, run_convert

from data_tools.format.manifest import merge


def test_corrupt_image_is_skipped_and_counted(tmp_path):
    rows = cub_tree(tmp_path / "cub")
    broken = tmp_path / "cub" / "images" / rows[1]["path"]
    broken.write_bytes(broken.read_bytes()[:200])
    manifest = run_convert("cub", tmp_path / "cub", tmp_path / "out")
    assert manifest["num_samples"] == 5
    assert manifest["bad_samples"] == {"truncated": 1}
    assert manifest["bad_examples"][0]["path"] == str(broken)
    assert_verifies(tmp_path / "out")


@pytest.mark.timeout(420)
@pytest.mark.slow
def test_cli_converts_verifies_and_resumes(tmp_path):
    cub_tree(tmp_path / "cub")
    out = tmp_path / "out"
    args = ["data", "convert", "cub", str(tmp_path / "cub"), str(out), "--split", "test", "shards.samples=1",
            "workers=1"]
    done = run_cli(*args)
    assert done.returncode == 0, done.stderr
    assert "3 samples in 3 shard(s), 3 labels" in done.stdout
    assert "cub test: partial, 3 of 5,794 images, 3 of 200 classes" in done.stdout
    assert sorted(p.name for p in out.glob("*.tar")) == [f"test-{i:06d}.tar" for i in range(3)]
    first = (out / "manifest.json").read_text()
    again = run_cli(*args)
    assert again.returncode == 0 and "resumed: 3 finished shard(s) kept" in again.stderr
    assert (out / "manifest.json").read_text() == first
    checked = run_cli("data", "verify", str(out), "--workers", "1", "--quiet")
    assert checked.returncode == 0, checked.stderr


@pytest.mark.slow
@pytest.mark.parametrize("args,message", [
    (["cub", "{root}", "{out}", "--split", "val"], "config key 'split' = 'val': cub has train and test"),
    (["cub", "{root}", "{out}", "workers=-1"], "config key 'workers' = -1 is out of range"),
    (["cub", "{root}/nowhere", "{out}"], "dataset root not found"),
    (["places", "{root}", "{out}"], "is not a Places365-Standard root: categories_places365.txt"),
    (["cub", "{root}", "{root}"], "'output' must not be the dataset root"),
])
def test_cli_bad_input_is_one_line(tmp_path, args, message):
    cub_tree(tmp_path / "cub")
    done = run_cli("data", "convert", *(a.format(root=tmp_path / "cub", out=tmp_path / "out") for a in args))
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr


@pytest.mark.slow
def test_cli_label_problem_quotes_the_lines(tmp_path):
    cub_tree(tmp_path / "cub")
    replace_line(tmp_path / "cub" / "image_class_labels.txt", 4, "4 9")
    done = run_cli("data", "convert", "cub", str(tmp_path / "cub"), str(tmp_path / "out"))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.splitlines()[:2] == [
        "wsl: error: image_class_labels.txt: 1 class id(s) out of range 1..3:",
        "  image_class_labels.txt:4: 4 9"]


def test_reused_output_of_another_split_is_refused(tmp_path):
    cub_tree(tmp_path / "cub")
    run_convert("cub", tmp_path / "cub", tmp_path / "out")
    with pytest.raises(ValueError, match="holds shards of a different build"):
        run_convert("cub", tmp_path / "cub", tmp_path / "out", "split=test")


def test_parts_merge_into_the_single_run(tmp_path):
    imagenet_train(tmp_path / "in")
    whole = run_convert("imagenet", tmp_path / "in", tmp_path / "whole")
    for i in range(2):
        run_convert("imagenet", tmp_path / "in", tmp_path / "parts", f"part={i}/2")
    merged = merge(str(tmp_path / "parts"))
    assert merged["shards"] == whole["shards"] and merged["source"] == whole["source"]
    assert_verifies(tmp_path / "parts")
