"""Shared fixtures (real JPEGs written to disk and real shards built from them) and the
test tiers. Shared helper functions are in helpers.py."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from helpers import build_shards, write_corpus

SLOW_TIERS = ("slow", "slurm", "demo", "browser", "gpu")


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
def corpus(tmp_path_factory) -> Path:
    """A JSONL manifest over 240 generated JPEGs (shared, read-only)."""
    return write_corpus(tmp_path_factory.mktemp("corpus"), 240)


@pytest.fixture(scope="session")
def shard_dir(tmp_path_factory, corpus) -> Path:
    """Shards built from `corpus`, 32 samples each (shared, read-only)."""
    out = tmp_path_factory.mktemp("shards")
    build_shards(corpus, out, "shards.samples=32")
    return out
