"""Sample tables: what build writes, what a loader maps, `wsl data index` for older shard
sets, and `wsl data verify` catching a table that disagrees with its tar."""
from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
from helpers import CLI, REPO

from data_tools.format import resampling, shards, tables
from data_tools.format.verify import verify
from data_tools.loaders import LoaderConfig, make_loader

SMALL = LoaderConfig(backend="pil", batch_size=16, image_size=32, resize_size=40, workers=1)


def test_tables_hold_each_samples_place_labels_and_key(shard_dir):
    for entry in shards.read_manifest(shard_dir)["shards"]:
        table = tables.Table(shard_dir / tables.table_file(entry["file"]))
        raw = (shard_dir / entry["file"]).read_bytes()
        samples = list(shards.iter_samples(shard_dir / entry["file"]))
        assert len(table) == entry["samples"] == len(samples)
        for row, (key, files) in enumerate(samples):
            assert table.key(row) == key and table.bad[row] == 0
            assert raw[table.offset[row]:table.offset[row] + table.size[row]] == files["jpg"]
            assert table.labels(row).tolist() == json.loads(files["json"])["labels"]
        assert isinstance(table.offset, np.memmap) or isinstance(table.offset.base, np.memmap)


def test_write_and_read_round_trip_any_arrays(tmp_path):
    arrays = {"a": np.arange(5, dtype=np.int64), "b": np.array([1.5, -2.0]), "c": np.frombuffer(b"xyz", np.uint8)}
    tables.write(tmp_path / "t.table", arrays, note="hi")
    header, back = tables.read(tmp_path / "t.table")
    assert header == {"note": "hi"}
    for name, array in arrays.items():
        assert back[name].dtype == array.dtype and np.array_equal(back[name], array)
    (tmp_path / "bad.table").write_bytes(b"not a table at all")
    with pytest.raises(ValueError, match="not a sample table"):
        tables.read(tmp_path / "bad.table")


@pytest.fixture(scope="module")
def old_build(tmp_path_factory, shard_dir):
    """The shared build as an older version left it: no sample tables, no resampling fit."""
    out = tmp_path_factory.mktemp("old") / "shards"
    shutil.copytree(shard_dir, out)
    for path in list(out.glob("*.table")):  # resampling.table too
        path.unlink()
    return out


@pytest.mark.slow
def test_a_shard_set_without_tables_is_refused_in_one_line_then_indexed(old_build, shard_dir):
    with pytest.raises(FileNotFoundError, match=r"run `wsl data index .*`"):
        make_loader(SMALL, old_build)
    assert any("sample table missing" in p for p in verify(str(old_build), workers=1, progress=False))
    done = subprocess.run([*CLI, "data", "index", str(old_build), "--quiet"], cwd=REPO, capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    assert f"{len(list(shard_dir.glob('*.tar')))} sample table(s) written" in done.stdout
    assert (old_build / resampling.FILE).is_file()
    for path in shard_dir.glob("*.table"):  # the same bytes as the build wrote
        assert (old_build / path.name).read_bytes() == path.read_bytes()
    assert verify(str(old_build), workers=1, progress=False) == []
    first = next(iter(make_loader(SMALL, old_build)))
    assert first[0].shape == (16, 3, 32, 32)


@pytest.mark.slow
def test_index_on_a_directory_without_manifest_is_one_line(tmp_path):
    done = subprocess.run([*CLI, "data", "index", str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"wsl: error: {tmp_path} has no manifest.json "
                                                "(not a finished `wsl data build` output)"]


def test_verify_finds_a_table_that_disagrees_and_a_stale_fit(tmp_path, shard_dir):
    out = shutil.copytree(shard_dir, tmp_path / "copy")
    path = out / "train-000001.table"
    header, arrays = tables.read(path)
    arrays = {k: np.array(v) for k, v in arrays.items()}
    arrays["offset"][3] += 1
    tables.write(path, arrays, **header)
    manifest = shards.read_manifest(out)
    manifest["shards"][0]["sha256"] = "0" * 64  # the set changed since the fit
    shards.write_json(out / "manifest.json", manifest)
    problems = verify(str(out), workers=1, progress=False)
    assert "train-000001.table: row 3 (" in " ".join(problems)
    assert any("resampling.table was fitted to other shards" in p for p in problems)
    with pytest.raises(ValueError, match="wsl data index"):
        resampling.load(out, manifest)


def test_a_table_whose_rows_disagree_with_the_manifest_is_named(tmp_path, shard_dir):
    out = shutil.copytree(shard_dir, tmp_path / "copy")
    manifest = shards.read_manifest(out)
    rows = manifest["shards"][0]["samples"]
    manifest["shards"][0]["samples"] += 1
    shards.write_json(out / "manifest.json", manifest)
    with pytest.raises(ValueError, match=f"train-000000.table has {rows} rows, the manifest says {rows + 1}"):
        make_loader(LoaderConfig(backend="pil", sqrt_resample=False, workers=1), out)


def test_a_rank_reads_only_the_tables_of_the_shards_it_reaches(tmp_path, shard_dir):
    """With every other shard's table deleted, a rank still starts and makes its first batches."""
    out = shutil.copytree(shard_dir, tmp_path / "copy")
    cfg = LoaderConfig(backend="pil", batch_size=8, image_size=32, resize_size=40, workers=1, shuffle_buffer=8)
    probe = make_loader(cfg, shard_dir, rank=1, world_size=2)
    first = probe.order().rows(0, 16)  # the first two batches
    needed = {probe.catalog.shard_of(r) for r in first} | {0}  # shard 0: checked at load
    files = [e["file"] for e in shards.read_manifest(out)["shards"]]
    assert len(needed) < len(files) - 2
    for number, name in enumerate(files):
        if number not in needed:
            (out / tables.table_file(name)).unlink()
    batches = iter(make_loader(cfg, out, rank=1, world_size=2))
    assert [k for _ in range(2) for k in next(batches).keys] == [probe.catalog.key(r) for r in first]
    batches.close()
