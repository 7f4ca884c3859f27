"""launch/commands.py, its `wsl data` handlers as a user runs them: exit codes, messages,
verify and stats.

Every command is a real subprocess; they are started together (a few at a time) because
each one spends seconds importing torch through webdataset. Each kind of shard damage is
also checked alone, in-process, so a finding is never blamed on the wrong shard.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from helpers import run_cli
from PIL import Image

from data_tools.format import resampling, shards
from data_tools.format.verify import verify

pytestmark = pytest.mark.slow


def run_all(jobs: dict[str, list[str]], at_once: int = 3) -> dict[str, subprocess.CompletedProcess]:
    with ThreadPoolExecutor(at_once) as pool:
        futures = {name: pool.submit(run_cli, *args, timeout=240) for name, args in jobs.items()}
        return {name: future.result() for name, future in futures.items()}


def copy_build(shard_dir: Path, dest: Path) -> Path:
    shutil.copytree(shard_dir, dest)
    return dest


# Ways to damage a copy of the shared 8-shard build; each returns the file it damaged.

def truncate_shard(directory: Path) -> str:
    tar = directory / "train-000003.tar"
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])
    return tar.name


def flip_jpg_byte(directory: Path) -> str:
    tar = directory / "train-000002.tar"
    offset, size = shards.read_dali_index(directory / "train-000002.idx")[0]["jpg"]
    data = bytearray(tar.read_bytes())
    data[offset + size // 2] ^= 0xFF  # a byte in the middle of the first jpg
    tar.write_bytes(bytes(data))
    return tar.name


def delete_shard(directory: Path) -> str:
    (directory / "train-000005.tar").unlink()
    return "train-000005.tar"


def add_stray_shard(directory: Path) -> str:
    shutil.copy(directory / "train-000000.tar", directory / "train-000099.tar")
    return "train-000099.tar"


DAMAGE = {"truncated": truncate_shard, "flipped": flip_jpg_byte, "deleted": delete_shard, "stray": add_stray_shard}


def expected_problem(kind: str, directory: Path) -> str:
    if kind == "truncated":
        return f"train-000003.tar: {(directory / 'train-000003.tar').stat().st_size} bytes, manifest says "
    return {"flipped": "train-000002.tar: sha256 differs from the manifest (file changed or corrupt)",
            "deleted": "train-000005.tar: missing",
            "stray": "train-000099.tar: shard not in the manifest"}[kind]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shard_dir, corpus):
    """Every CLI command of this file, run once, together."""
    base = tmp_path_factory.mktemp("cli")
    good = copy_build(shard_dir, base / "good")
    damaged = copy_build(shard_dir, base / "damaged")
    for damage in DAMAGE.values():
        damage(damaged)
    folder = base / "folder"
    (folder / "cls").mkdir(parents=True)
    jobs = {
        "verify_good": ["data", "verify", str(good), "--workers", "1", "--quiet"],
        "verify_damaged": ["data", "verify", str(damaged), "--workers", "1", "--quiet"],
        "stats": ["data", "stats", str(good), "--top", "5"],
        "unknown_key": ["data", "build", f"input.manifest={corpus}", f"output={base / 'o1'}", "vocab.topk=5"],
        "missing_manifest": ["data", "build", f"input.manifest={base / 'nowhere' / 'tags.jsonl'}",
                             f"output={base / 'o2'}"],
        "both_inputs": ["data", "build", f"input.manifest={corpus}", f"input.imagefolder={folder}",
                        f"output={base / 'o3'}"],
        "no_input": ["data", "build", f"output={base / 'o4'}", "progress=false"],
    }
    results = run_all(jobs)
    results["dirs"] = {"good": good, "damaged": damaged}
    results["base"] = base
    return results


def one_error_line(result: subprocess.CompletedProcess) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("wsl: error: ")
    return lines[0]


def problems(result: subprocess.CompletedProcess) -> list[str]:
    lines = result.stderr.strip().splitlines()
    assert lines and "problem(s) in" in lines[0], result.stderr
    return [line.strip() for line in lines[1:]]


# -- build: unusable config or input -> exit 2, one line -------------------------------------

def test_unknown_config_key(runs):
    result = runs["unknown_key"]
    assert result.returncode == 2
    assert "unknown config key 'vocab.topk'" in one_error_line(result)
    assert not (runs["base"] / "o1").exists()


def test_missing_input_manifest(runs):
    result = runs["missing_manifest"]
    assert result.returncode == 2
    line = one_error_line(result)
    assert "input manifest not found" in line and str(runs["base"] / "nowhere" / "tags.jsonl") in line
    assert not (runs["base"] / "o2").exists()


@pytest.mark.parametrize("case", ["both_inputs", "no_input"])
def test_exactly_one_input(runs, case):
    result = runs[case]
    assert result.returncode == 2
    line = one_error_line(result)
    assert "input.manifest" in line and "input.imagefolder" in line
    assert not (runs["base"] / {"both_inputs": "o3", "no_input": "o4"}[case]).exists()


# -- verify ---------------------------------------------------------------------------------

def test_verify_passes_on_a_good_build(runs):
    result = runs["verify_good"]
    assert result.returncode == 0, result.stderr
    assert "all shards, samples and images check out" in result.stdout


def test_verify_exits_1_listing_every_damaged_shard(runs):
    result = runs["verify_damaged"]
    assert result.returncode == 1
    found = problems(result)
    directory = runs["dirs"]["damaged"]
    for kind in DAMAGE:
        assert any(p.startswith(expected_problem(kind, directory)) for p in found), (kind, found)
    damaged = ("train-000003.", "train-000002.", "train-000005.", "train-000099.")
    assert all(p.startswith(damaged) for p in found), found


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_verify_finds_each_damage_alone(tmp_path, shard_dir, kind):
    directory = copy_build(shard_dir, tmp_path / kind)
    name = DAMAGE[kind](directory)
    found = verify(str(directory), workers=1, progress=False)
    assert any(p.startswith(expected_problem(kind, directory)) for p in found), found
    # Nothing else is blamed: every problem is about the damaged shard (or its index).
    assert found and all(p.startswith(name[: -len("tar")]) for p in found), found


def test_verify_rejects_a_shard_listed_twice(tmp_path, shard_dir):
    # What merging two builds' parts made: every count adds up, every file is sound.
    directory = copy_build(shard_dir, tmp_path / "twice")
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["shards"].insert(3, manifest["shards"][2])
    manifest["num_samples"] += manifest["shards"][2]["samples"]
    manifest["num_shards"] += 1
    shards.write_json(directory / "manifest.json", manifest)
    resampling.fit(directory, progress=False)
    found = verify(str(directory), workers=1, progress=False)
    assert found == ["train-000002.tar: listed 2 times in the manifest (every epoch would read it 2 times)"]


# -- stats ----------------------------------------------------------------------------------

def test_stats_prints_the_table_and_writes_a_png(runs):
    result = runs["stats"]
    assert result.returncode == 0, result.stderr
    good = runs["dirs"]["good"]
    manifest = json.loads((good / "manifest.json").read_text())
    rows = [line.split("\t") for line in (good / "vocabulary.tsv").read_text().splitlines()[1:]]
    counts = manifest["tag_counts"]
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"{manifest['num_samples']} images, {manifest['num_classes']} labels")
    assert lines[1].split() == ["rank", "index", "synset", "images", "share", "lemma"]
    order = sorted(range(len(counts)), key=lambda i: (-counts[i], i))
    for rank, i in enumerate(order[:5], start=1):
        fields = lines[1 + rank].split()
        assert fields[:4] == [str(rank), str(i), rows[i][1], str(counts[i])]
        assert fields[5] == rows[i][2]
    assert lines[7].startswith(f"... {len(counts) - 5} more")
    plot = good / "zipf.png"
    assert f"Zipf plot: {plot}" in result.stdout
    with Image.open(plot) as im:
        assert im.format == "PNG"
        assert im.size == (600, 400)
        im.load()
        assert len(np.unique(np.asarray(im.convert("L")))) > 2  # something is drawn


# -- unwritable outputs ------------------------------------------------------------------------

def test_an_unwritable_output_is_one_line_before_any_work(tmp_path, corpus, shard_dir, read_only):
    shutil.copytree(shard_dir, tmp_path / "locked" / "shards")
    locked = read_only(tmp_path / "locked")
    results = run_all({
        "build": ["data", "build", f"input.manifest={corpus}", f"output={locked / 'out'}", "progress=false"],
        "stats": ["data", "stats", str(locked / "shards")],
        "pretrain": ["pretrain", f"data.train={shard_dir}", f"run_dir={locked / 'run'}", "device=cpu",
                     "model.name=resnext_tiny", "train.total_images=16", "optim.warmup_images=8",
                     "data.loader.batch_size=8", "data.loader.workers=1", "data.loader.backend=pil"],
        "dedup": ["data", "dedup", "--train", str(shard_dir), "--against", str(shard_dir), "--out", str(tmp_path / "o"),
                  "--apply", str(locked / "clean")],
        "dedup_out": ["data", "dedup", "--train", str(shard_dir), "--against", str(shard_dir),
                      "--out", str(locked / "dedup")],
    })
    # (what cannot be written, the folder that refuses it)
    where = {"build": (locked / "out", locked), "stats": (locked / "shards" / "zipf.png", locked / "shards"),
             "pretrain": (locked / "run", locked), "dedup": (locked / "clean", locked),
             "dedup_out": (locked / "dedup", locked)}
    for name, result in results.items():
        assert result.returncode == 2, (name, result.stderr[-2000:])
        assert result.stdout == "", (name, result.stdout)  # stats' table is not printed before the error
        assert len(result.stderr.strip().splitlines()) == 1, (name, result.stderr[-2000:])
        assert f"{where[name][0]} cannot be written: {where[name][1]} is " in result.stderr, (name, result.stderr)
        assert "read-only file system" in result.stderr or "not writable by this user" in result.stderr
