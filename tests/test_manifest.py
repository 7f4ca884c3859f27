"""data_tools/format/manifest.py: the manifest of a build (counts, hashes, tag counts), and the
parts of a `--part` build merged into the manifest of the single build."""
from __future__ import annotations

import json
import shutil
import subprocess
from collections import Counter

import pytest
from helpers import CLI, REPO, build_shards, manifest_rows, read_samples, sha256

from data_tools.format import shards
from data_tools.format.manifest import merge


def test_manifest_counts_hashes_and_tag_counts(shard_dir, corpus, expected):
    manifest = json.loads((shard_dir / "manifest.json").read_text())
    assert manifest["format"] == "wsl-shards/1"
    assert manifest["label_type"] == "multi"
    assert manifest["num_samples"] == len(expected)
    assert manifest["num_shards"] == len(manifest["shards"]) == len(list(shard_dir.glob("*.tar")))
    assert manifest["samples_per_shard"] == 32
    assert manifest["inputs_sha256"] == sha256(corpus)
    for entry in manifest["shards"]:
        tar = shard_dir / entry["file"]
        assert entry["file"] == f"train-{entry['shard']:06d}.tar"
        assert entry["index"] == f"train-{entry['shard']:06d}.idx"
        assert entry["bytes"] == tar.stat().st_size
        assert entry["sha256"] == sha256(tar)
        assert entry["samples"] == sum(1 for _ in shards.iter_samples(tar))
    recount = Counter(label for _, _, files in read_samples(shard_dir) for label in json.loads(files["json"])["labels"])
    assert manifest["tag_counts"] == [recount[i] for i in range(manifest["num_classes"])]
    assert manifest["bad_samples"] == {} and manifest["bad_examples"] == [] and manifest["converted"] == {}
    assert manifest["dropped"]["no_wordnet_tag"] == len(manifest_rows(corpus)) - len(expected)


@pytest.mark.slow
def test_parts_merge_to_the_single_build(tmp_path, corpus, shard_dir):
    out = tmp_path / "parts"
    parts = {i: build_shards(corpus, out, "shards.samples=32", f"part={i}/3") for i in (0, 2)}

    # Merging while part 1/3 is missing: a clear error, nothing written.
    partial = tmp_path / "partial"
    partial.mkdir()
    for path in out.glob("manifest.part-*.json"):
        shutil.copy(path, partial / path.name)
    failing = subprocess.Popen([*CLI, "data", "merge", str(partial)], cwd=REPO, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    parts[1] = build_shards(corpus, out, "shards.samples=32", "part=1/3")
    stdout, stderr = failing.communicate(timeout=120)
    assert failing.returncode == 2
    assert stderr.strip().splitlines() == ["wsl: error: cannot merge: part(s) 1/3 not finished"]
    assert not (partial / "manifest.json").exists()

    for i, part in parts.items():
        assert part["part"] == f"{i}/3"
        assert part["shards"] and all(s["shard"] % 3 == i for s in part["shards"])
        assert (out / f"manifest.part-{i:05d}-of-00003.json").is_file()
    merged = merge(str(out))
    single = json.loads((shard_dir / "manifest.json").read_text())

    keys = [key for _, key, _ in read_samples(out)]
    single_keys = [key for _, key, _ in read_samples(shard_dir)]
    assert len(keys) == len(set(keys)), "a sample is in two parts"
    assert sorted(keys) == sorted(single_keys)
    assert merged["tag_counts"] == single["tag_counts"]
    assert json.loads((out / "manifest.json").read_text()) == merged
    assert merged == single

    # A second build in 2 parts beside the first's 3 lists the same shards: a merge that
    # read both listed every shard twice. Which N is merged must be said, and only it is.
    for i in (0, 1):
        build_shards(corpus, out, "shards.samples=32", f"part={i}/2")
    (out / "manifest.json").unlink()
    ambiguous = subprocess.run([*CLI, "data", "merge", str(out)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert ambiguous.returncode == 2
    assert ambiguous.stderr.strip().splitlines() == [
        f"wsl: error: cannot merge: {out} holds parts of builds in 2 and 3 parts; say which with --parts N"]
    assert not (out / "manifest.json").exists()
    assert merge(str(out), 2) == merge(str(out), 3) == single
    with pytest.raises(ValueError, match="no part of a build in 4 parts"):
        merge(str(out), 4)
