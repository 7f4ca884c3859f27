"""data_tools/writing/plan.py: mixed batches from any input order, since shards are written in the
order of their keys' hash.

A crawl lists images grouped by tag; shards cut from it in input order hold one or two
tags each, and so do the batches read from them. Built with the default order=hash, the
same crawl must give batches as varied as a randomly shuffled input does.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from helpers import build_shards

from data_tools.build import BuildConfig
from data_tools.common.config import ConfigError
from data_tools.common.config import build as make_config
from data_tools.format import shards
from data_tools.loaders import LoaderConfig, make_loader
from data_tools.writing.plan import key_hash
from launch.fixtures.synthetic import write_corpus

BATCH = 16
NOUNS = ["#dog", "#cat", "#car", "#tree", "#flower", "#beach", "#mountain", "#sunset", "#bear", "#bird",
         "#horse", "#boat", "#house", "#bridge", "#river", "#lake", "#forest", "#city", "#road", "#train"]


def rewrite(corpus: Path, out: Path, order) -> Path:
    """The corpus's records with their first tag only, in another order, paths made absolute."""
    rows = [json.loads(line) for line in corpus.read_text().splitlines()]
    for row in rows:
        row["path"], row["tags"] = str(corpus.parent / row["path"]), row["tags"][:1]
    out.write_text("".join(json.dumps(r) + "\n" for r in order(rows)))
    return out


def crawl(rows):
    return sorted(rows, key=lambda r: (r["tags"][0], r["path"]))  # grouped by (first) tag


def shuffled(rows):
    return random.Random(0).sample(rows, len(rows))


def distinct_tags_per_batch(directory: Path) -> float:
    cfg = LoaderConfig(backend="pil", batch_size=BATCH, shuffle_buffer=1, sqrt_resample=False, workers=1)
    loader = make_loader(cfg, directory)
    rows = loader.order().rows()
    batches = [rows[s:s + BATCH] for s in range(0, len(rows) - BATCH + 1, BATCH)]
    return float(np.mean([len({int(t) for r in b for t in loader.catalog.labels(r)}) for b in batches]))


@pytest.fixture(scope="module")
def builds(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mixing")
    corpus = write_corpus(root / "corpus", 240, size=(32, 24), tags=NOUNS)
    inputs = {"crawl": rewrite(corpus, root / "crawl.jsonl", crawl),
              "shuffled": rewrite(corpus, root / "shuffled.jsonl", shuffled)}
    out = {}
    for name, manifest, order in [("crawl-hash", "crawl", "hash"), ("crawl-input", "crawl", "input"),
                                  ("shuffled-input", "shuffled", "input")]:
        out[name] = root / name
        build_shards(inputs[manifest], out[name], "shards.samples=20", f"shards.order={order}")
    return out


def test_a_crawl_built_in_hash_order_gives_batches_as_mixed_as_a_shuffled_input(builds):
    random_batches = distinct_tags_per_batch(builds["shuffled-input"])
    mixed = distinct_tags_per_batch(builds["crawl-hash"])
    grouped = distinct_tags_per_batch(builds["crawl-input"])
    assert mixed >= 0.85 * random_batches, (mixed, random_batches)
    assert grouped < 0.7 * random_batches, (grouped, random_batches)  # what hash order fixes


def test_hash_order_does_not_depend_on_the_input_order(builds):
    def content(directory):
        return {entry["file"]: [key for key, _ in shards.iter_samples(directory / entry["file"])]
                for entry in shards.read_manifest(directory)["shards"]}

    crawl_keys = content(builds["crawl-hash"])
    assert sum(map(len, crawl_keys.values())) == shards.read_manifest(builds["crawl-hash"])["num_samples"]
    for keys in crawl_keys.values():
        assert keys == sorted(keys, key=key_hash)


def test_input_order_cuts_shards_of_exactly_the_size_asked(builds):
    sizes = [e["samples"] for e in shards.read_manifest(builds["crawl-input"])["shards"]]
    assert sizes[:-1] == [20] * (len(sizes) - 1) and 0 < sizes[-1] <= 20
    assert not (builds["crawl-hash"] / ".build" / "scatter-00000-of-00001").exists()  # bucket files removed



def test_an_unknown_order_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match="'shards.order' = 'random' must be one of hash, input"):
        make_config(BuildConfig, [], ["output=x", "input.manifest=y", "shards.order=random"])
