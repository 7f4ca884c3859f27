"""The loader's plan (pure numpy): equal per-rank counts, disjoint ranks, shuffles, resume, sqrt law."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from data_tools.loaders.plan import Plan, cut, repeats, sqrt_rates, window_shuffle

UNEVEN = [5, 50, 1, 17, 33, 2, 64, 9, 40]  # samples per shard, deliberately uneven


def starts(sizes: list[int]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


def shard_of(rows: np.ndarray, sizes: list[int]) -> np.ndarray:
    return np.searchsorted(starts(sizes), rows, side="right") - 1


@pytest.mark.parametrize("world", [1, 2, 3, 4, 7])
def test_every_rank_gets_the_same_number_of_disjoint_samples(world):
    plan = Plan(starts(UNEVEN), seed=3, window=16)
    orders = [plan.order(0, world, r) for r in range(world)]
    assert len({len(o) for o in orders}) == 1
    seen = np.concatenate(orders)
    assert len(np.unique(seen)) == len(seen)
    assert sum(UNEVEN) - len(seen) < world  # only the remainder of the cut is left out


def test_ranks_read_contiguous_runs_of_the_shuffled_shards():
    plan = Plan(starts(UNEVEN), seed=1, window=1)
    shard_order = list(dict.fromkeys(shard_of(plan.stream(4), UNEVEN)))
    runs = [sorted(set(shard_of(plan.order(4, 3, r), UNEVEN)), key=shard_order.index) for r in range(3)]
    for shards in runs:
        first = shard_order.index(shards[0])
        assert shards == shard_order[first:first + len(shards)]
    for a in range(3):
        for b in range(a + 1, 3):
            assert len(set(runs[a]) & set(runs[b])) <= 1  # at most the shard at their seam


def test_shard_order_is_reshuffled_per_epoch_and_reproducible():
    plan = Plan(starts(UNEVEN), seed=7)
    epochs = [plan.stream(e) for e in range(4)]
    assert all(sorted(e) == list(range(sum(UNEVEN))) for e in epochs)
    assert len({tuple(e) for e in epochs}) == 4
    assert np.array_equal(Plan(starts(UNEVEN), seed=7).stream(2), epochs[2])
    assert not np.array_equal(Plan(starts(UNEVEN), seed=8).stream(2), epochs[2])


def test_window_shuffle_permutes_within_windows_only():
    order = np.arange(100) * 10
    out = window_shuffle(order, 16, np.random.default_rng(0))
    assert not np.array_equal(out, order)
    for start in range(0, 100, 16):
        assert sorted(out[start:start + 16]) == list(order[start:start + 16])


def test_eval_keeps_catalog_order_and_wraps_to_cover_every_sample():
    plan = Plan(starts(UNEVEN), train=False, rates=np.full(sum(UNEVEN), 3.0))
    orders = [plan.order(5, 4, r) for r in range(4)]
    assert len({len(o) for o in orders}) == 1
    assert np.array_equal(np.concatenate(orders)[:sum(UNEVEN)], np.arange(sum(UNEVEN)))
    assert cut(np.arange(0), 4, 0, wrap=True).size == 0


def remainders(plan: Plan, epoch: int, world: int, consumed: int, runs=()) -> tuple[list, list]:
    """(rows consumed, rows left) of every rank after each consumed `consumed` samples."""
    orders = [plan.order(epoch, world, r, list(runs)) for r in range(world)]
    return [x for o in orders for x in o[:consumed]], [x for o in orders for x in o[consumed:]]


def test_resume_on_a_changed_world_size_yields_exactly_the_samples_left():
    plan = Plan(starts([60, 60, 60, 60]), seed=2, window=8)  # 240: 4 x 60, then 192 left = 3 x 64
    stream = Counter(plan.stream(1).tolist())
    done, left = remainders(plan, 1, 4, 12)
    resumed = [x for r in range(3) for x in plan.order(1, 3, r, [(4, 12)])]
    assert Counter(done) + Counter(resumed) == stream
    assert Counter(resumed) == Counter(left)

    # and again from 3 to 6 ranks, 10 more samples each
    done2, _ = remainders(plan, 1, 3, 10, [(4, 12)])
    resumed2 = [x for r in range(6) for x in plan.order(1, 6, r, [(4, 12), (3, 10)])]
    assert Counter(done) + Counter(done2) + Counter(resumed2) == stream


def test_resume_drops_at_most_the_remainder_of_the_new_cut():
    plan = Plan(starts(UNEVEN), seed=5, window=8)
    done, left = remainders(plan, 0, 2, 20)
    resumed = [x for r in range(5) for x in plan.order(0, 5, r, [(2, 20)])]
    assert not set(done) & set(resumed)
    assert set(resumed) <= set(left) and len(left) - len(resumed) < 5


def zipf_labels(counts: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One tag per sample, tag t on counts[t] samples; (label_ptr, label_idx, tag_counts)."""
    idx = np.repeat(np.arange(len(counts)), counts)
    np.random.default_rng(0).shuffle(idx)
    return np.arange(len(idx) + 1), idx, np.asarray(counts, np.float64)


def test_sqrt_resampling_gives_each_tag_a_share_that_goes_as_sqrt_of_its_frequency():
    counts = [1600, 400, 100, 25]
    ptr, idx, tag_counts = zipf_labels(counts)
    plan = Plan(starts([len(idx)]), seed=0, rates=sqrt_rates(ptr, idx, tag_counts))
    streams = [plan.stream(e) for e in range(20)]
    measured = np.bincount(idx[np.concatenate(streams)], minlength=len(counts))
    expected = np.sqrt(counts) / np.sqrt(counts).sum()
    np.testing.assert_allclose(measured / measured.sum(), expected, rtol=0.03)
    assert abs(np.mean([len(s) for s in streams]) / len(idx) - 1) < 0.01  # epochs keep their length


def test_sqrt_rates_average_one_and_average_over_a_samples_tags():
    ptr = np.array([0, 1, 3])                  # sample 0: tag 0; sample 1: tags 0 and 1
    idx = np.array([0, 0, 1])
    rates = sqrt_rates(ptr, idx, np.array([4.0, 16.0]))
    weights = np.array([1 / 2, (1 / 2 + 1 / 4) / 2])
    np.testing.assert_allclose(rates, weights * 2 / weights.sum())


def test_repeats_round_stochastically_without_bias():
    rates = np.full(100_000, 1.3)
    counts = repeats(rates, np.random.default_rng(0))
    assert set(np.unique(counts)) == {1, 2}
    assert abs(counts.mean() - 1.3) < 0.01
