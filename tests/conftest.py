"""Shared fixtures: real JPEGs written to disk and real shards built from them. Shared
helper functions are in helpers.py."""
from __future__ import annotations

from pathlib import Path

import pytest

from helpers import build_shards, write_corpus


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
