"""The index over the evaluation side's views (search.index_plan, search.make_index): exact
search while the set is small, an inverted file sized from the views above, explicit keys
winning; real FAISS on synthetic vectors."""
from __future__ import annotations

import faiss
import numpy as np
import pytest

from data_tools.dedup.search import FLAT_UP_TO, PROBES, TRAIN_PER_CELL, EvalIndex, index_plan, make_index

DIM = 16


def unit(rng, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM), dtype=np.float32)
    faiss.normalize_L2(x)
    return x


def noisy(rng, x: np.ndarray) -> np.ndarray:
    """Near-duplicates of x (cosine about 0.99)."""
    q = (x + rng.standard_normal(x.shape, dtype=np.float32) * (0.1 / np.sqrt(DIM))).astype(np.float32)
    faiss.normalize_L2(q)
    return q


def test_a_small_set_is_searched_exactly():
    x = unit(np.random.default_rng(0), FLAT_UP_TO)
    assert index_plan(len(x), "auto", None, None)[0] == "flat"
    assert isinstance(make_index(DIM, "auto", None, None, x), faiss.IndexFlatIP)


def test_a_large_set_gets_an_inverted_file_with_nlist_from_its_size():
    rng = np.random.default_rng(1)
    x = unit(rng, 40_000)   # 40,000 views: 4 * sqrt = 800, nearest power of two 1024
    kind, nlist, nprobe = index_plan(len(x), "auto", None, None)
    assert (kind, nlist, nprobe) == ("ivf", 1024, PROBES) and len(x) >= TRAIN_PER_CELL * nlist
    index = make_index(DIM, "auto", None, None, x)
    assert isinstance(index, faiss.IndexIVFFlat) and (index.nlist, index.nprobe) == (1024, PROBES)
    picked = rng.choice(len(x), 300, replace=False)
    _, rows = index.search(noisy(rng, x[picked]), 1)
    assert (rows[:, 0] == picked).mean() >= 0.95   # approximate, not lost


def test_a_derived_nlist_leaves_enough_training_points_per_cell():
    # 4 * sqrt(10,000) = 400, nearest power of two 512: 19 points each; the next one down
    assert index_plan(10_000, "ivf", None, None) == ("ivf", 256, PROBES)
    assert index_plan(10_000, "ivf", 4096, None) == ("flat", 4096, PROBES)   # given, too large: exact


@pytest.mark.parametrize("given, want", [
    (("flat", None, None), ("flat", 1024, PROBES)),
    (("auto", 64, 4), ("ivf", 64, 4)),
    (("ivf", None, 3), ("ivf", 1024, 3)),
])
def test_given_keys_win(given, want):
    assert index_plan(50_000, *given) == want


def test_an_inverted_file_that_finds_fewer_views_than_asked_pads_the_shortlist():
    rng = np.random.default_rng(2)
    x = unit(rng, 4_000)
    owner = np.repeat(np.arange(40), 100)
    index = EvalIndex(None, list(range(40)), x, owner, "ivf", 64, 1)
    assert index.plan == ("ivf", 64, 1)
    queries = noisy(rng, x[[5, 1_234, 3_999]])
    # one cell of about 60 views holds fewer than 64 images: FAISS pads its rows with -1
    scores, owners = index.shortlist(queries, [1, 1, 1], 64)
    assert list(owners[:, 0]) == [0, 12, 39]
    assert (owners == -1).any(axis=1).all() and ((owners >= 0) == (scores > -1)).all()
    for row in owners:
        assert len(set(row[row >= 0])) == (row >= 0).sum()


@pytest.mark.parametrize("kind, nlist", [("flat", None), ("ivf", 32)])
def test_views_handed_over_by_shard_build_the_same_index_and_are_let_go(kind, nlist):
    rng = np.random.default_rng(3)
    parts = [unit(rng, n) for n in (700, 0, 1_500, 1)]
    whole = np.concatenate(parts)
    queries = noisy(rng, whole[rng.choice(len(whole), 50, replace=False)])
    by_shard = make_index(DIM, kind, nlist, 4, parts)
    assert parts == []   # each shard's array dropped once added: the build holds the views once
    assert by_shard.ntotal == len(whole)
    if kind == "ivf":   # FAISS's own add into the same cells (the lists sized first here)
        plain = faiss.IndexIVFFlat(faiss.IndexFlatIP(DIM), DIM, nlist, faiss.METRIC_INNER_PRODUCT)
        plain.train(whole[np.sort(np.random.default_rng(0).choice(len(whole), 64 * nlist, replace=False))])
        plain.nprobe = 4
    else:
        plain = faiss.IndexFlatIP(DIM)
    plain.add(whole)
    for got, want in zip(by_shard.search(queries, 5), plain.search(queries, 5)):
        np.testing.assert_array_equal(got, want)   # same rows in the same order, same cells
