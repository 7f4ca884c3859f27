"""Shared fixtures (real JPEGs written to disk, real shards built from them, a tiny
pretrained backbone) and the test tiers. Shared helper functions are in helpers.py."""
from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest
from helpers import (
    build_shards,
    colour_folder,
    imagefolder_shards,
    make_config,
    manifest_rows,
    pretrained,
    write_corpus,
)

from data_tools.labels.wordnet import WordNet

SLOW_TIERS = ("slow", "slurm", "demo", "browser", "gpu")


def pytest_configure(config):
    """A shell without job control starts a background command (`make test &`, nohup) with
    Ctrl-C ignored, and the programs the tests start inherit that: every Ctrl-C test would
    then test a `wsl` that cannot be interrupted. A handler here is reset to the default
    in each child, as in a terminal."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects, so `-m unit` sees the marker
def pytest_collection_modifyitems(items):
    """Every test without a slower tier's marker is a `unit` test (`make test-fast`)."""
    for item in items:
        if not any(item.get_closest_marker(tier) for tier in SLOW_TIERS):
            item.add_marker(pytest.mark.unit)


@pytest.fixture(autouse=True)
def unit_tests_start_no_process(request, monkeypatch):
    """Keeps the fast tier fast: a `unit` test that starts a program fails, naming the tier it
    belongs to. (Fork-based worker pools, started in-process, are allowed.)"""
    if request.node.get_closest_marker("unit"):
        def refuse(self, args, *rest, **kwargs):
            raise AssertionError(f"a unit test started {args!r}: mark it @pytest.mark.slow")
        monkeypatch.setattr(subprocess.Popen, "_execute_child", refuse)


@pytest.fixture(scope="session")
def cub(tmp_path_factory) -> dict:
    """A tiny CUB-200-2011 (3 classes), converted by `wsl data convert`: single-label
    samples with `labels` and no `tags` (shared, read-only)."""
    from helpers import cub_tree

    from data_tools.convert import ConvertConfig, convert
    root = tmp_path_factory.mktemp("cub")
    cub_tree(root / "CUB_200_2011", per_class=6)
    sets = {}
    for split in ("train", "test"):
        convert(make_config(ConvertConfig, [], ["dataset=cub", f"root={root}", f"output={root / split}",
                                                f"split={split}", "progress=false", "workers=1"]))
        sets[split] = root / split
    return sets


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """A JSONL manifest over 240 generated JPEGs (shared, read-only)."""
    return write_corpus(tmp_path_factory.mktemp("corpus"), 240)


@pytest.fixture(scope="session")
def shard_dir(tmp_path_factory, corpus) -> Path:
    """Shards built from `corpus`, 32 samples each (shared, read-only)."""
    out = tmp_path_factory.mktemp("shards")
    build_shards(corpus, out, "shards.samples=32")
    return out


@pytest.fixture
def read_only():
    """read_only(folder): make `folder` unwritable as a user meets it: a read-only bind mount
    as root (root ignores permission bits), permission bits otherwise; undone afterwards."""
    import os
    import subprocess
    mounted, chmodded = [], []

    def make(folder: Path) -> Path:
        if os.geteuid() != 0:
            folder.chmod(0o555)
            chmodded.append(folder)
            return folder
        for args in (["mount", "--bind", str(folder), str(folder)], ["mount", "-o", "remount,bind,ro", str(folder)]):
            if subprocess.run(args, capture_output=True).returncode != 0:
                if args[1] == "-o":
                    subprocess.run(["umount", str(folder)], check=True)
                pytest.skip("root without the right to mount: no way to make a folder read-only")
        mounted.append(folder)
        return folder

    yield make
    for folder in mounted:
        subprocess.run(["umount", str(folder)], check=True)
    for folder in chmodded:
        folder.chmod(0o755)


@pytest.fixture(scope="module")
def expected(corpus) -> dict[str, dict]:
    """key -> {path, tags, synsets} of every record that must become a sample."""
    wn = WordNet()
    out = {}
    for i, row in enumerate(manifest_rows(corpus)):
        synsets = {sid for sid in map(wn.lookup, row["tags"]) if sid}
        if synsets:
            out[f"{i:012d}"] = {"path": str(corpus.parent / row["path"]), "tags": row["tags"], "synsets": synsets}
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    """Single-label shards of four colour classes, `train` and `val` (and their `root`), for
    fine-tuning and the probe."""
    root = tmp_path_factory.mktemp("colours")
    return {"train": imagefolder_shards(colour_folder(root / "raw-train", 12, 0), root / "train"),
            "val": imagefolder_shards(colour_folder(root / "raw-val", 4, 1), root / "val"),
            "root": root}


@pytest.fixture(scope="module")
def backbone_file(data) -> Path:
    """A tiny backbone pretrained on `data`'s training shards."""
    return pretrained(data["root"] / "backbone.pt", data["train"])
