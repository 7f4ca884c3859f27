"""The loader's plan (pure numpy): equal per-rank counts, disjoint ranks, shuffles, resume,
the square-root law on one-tag and multi-tag data, and lazy expansion."""
from __future__ import annotations

import functools
from collections import Counter

import numpy as np
import pytest

from data_tools.format import resampling
from data_tools.loaders.plan import Order, Plan, Stream, cut, spread, stochastic_round, systematic

UNEVEN = [5, 50, 1, 17, 33, 2, 64, 9, 40]  # samples per shard, deliberately uneven


def starts(sizes: list[int]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


def rows(plan: Plan, epoch: int, world: int = 1, rank: int = 0, runs=()) -> np.ndarray:
    return plan.order(epoch, world, rank, list(runs)).rows()


def stream_rows(plan: Plan, epoch: int) -> np.ndarray:
    """The whole epoch's stream as rows, unshuffled by windows."""
    return Order(plan, epoch, plan.stream(epoch), 0, 0).expand(plan.stream(epoch))


def shard_of(rows: np.ndarray, sizes: list[int]) -> np.ndarray:
    return np.searchsorted(starts(sizes), rows, side="right") - 1


@pytest.mark.parametrize("world", [1, 2, 3, 4, 7])
def test_every_rank_gets_the_same_number_of_disjoint_samples(world):
    plan = Plan(np.array(UNEVEN), seed=3, window=16)
    orders = [rows(plan, 0, world, r) for r in range(world)]
    assert len({len(o) for o in orders}) == 1
    seen = np.concatenate(orders)
    assert len(np.unique(seen)) == len(seen)
    assert sum(UNEVEN) - len(seen) < world  # only the remainder of the cut is left out


def test_ranks_read_contiguous_runs_of_the_shuffled_shards():
    plan = Plan(np.array(UNEVEN), seed=1, window=1)
    shard_order = list(dict.fromkeys(shard_of(stream_rows(plan, 4), UNEVEN)))
    runs = [sorted(set(shard_of(rows(plan, 4, 3, r), UNEVEN)), key=shard_order.index) for r in range(3)]
    for shards in runs:
        first = shard_order.index(shards[0])
        assert shards == shard_order[first:first + len(shards)]
    for a in range(3):
        for b in range(a + 1, 3):
            assert len(set(runs[a]) & set(runs[b])) <= 1  # at most the shard at their seam


def test_shard_order_is_reshuffled_per_epoch_and_reproducible():
    plan = Plan(np.array(UNEVEN), seed=7)
    epochs = [stream_rows(plan, e) for e in range(4)]
    assert all(sorted(e) == list(range(sum(UNEVEN))) for e in epochs)
    assert len({tuple(e) for e in epochs}) == 4
    assert np.array_equal(stream_rows(Plan(np.array(UNEVEN), seed=7), 2), epochs[2])
    assert not np.array_equal(stream_rows(Plan(np.array(UNEVEN), seed=8), 2), epochs[2])


def test_window_shuffle_permutes_within_windows_only():
    plan = Plan(np.array(UNEVEN), seed=4, window=16)
    unshuffled = Order(Plan(np.array(UNEVEN), seed=4, window=1), 0, plan.stream(0), 0, 0).rows()
    out = rows(plan, 0)
    assert not np.array_equal(out, unshuffled)
    for start in range(0, len(out), 16):
        assert sorted(out[start:start + 16]) == sorted(unshuffled[start:start + 16])


def test_eval_keeps_catalog_order_and_wraps_to_cover_every_sample():
    plan = Plan(np.array(UNEVEN), train=False, weights=np.full(len(UNEVEN), 300.0), rates=lambda s: None)
    orders = [rows(plan, 5, 4, r) for r in range(4)]
    assert len({len(o) for o in orders}) == 1
    assert np.array_equal(np.concatenate(orders)[:sum(UNEVEN)], np.arange(sum(UNEVEN)))
    assert len(cut(Stream(np.zeros((0, 3), np.int64)), 4, 0, wrap=True)) == 0
    tiny = [rows(Plan(np.array([2, 1]), train=False), 0, 5, r) for r in range(5)]  # fewer samples than ranks
    assert [len(t) for t in tiny] == [1] * 5 and sorted(np.concatenate(tiny)[:3]) == [0, 1, 2]


def remainders(plan: Plan, epoch: int, world: int, consumed: int, runs=()) -> tuple[list, list]:
    """(rows consumed, rows left) of every rank after each consumed `consumed` samples."""
    orders = [rows(plan, epoch, world, r, runs) for r in range(world)]
    return [x for o in orders for x in o[:consumed]], [x for o in orders for x in o[consumed:]]


def test_resume_on_a_changed_world_size_yields_exactly_the_samples_left():
    plan = Plan(np.array([60, 60, 60, 60]), seed=2, window=8)  # 240: 4 x 60, then 192 left = 3 x 64
    stream = Counter(stream_rows(plan, 1).tolist())
    done, left = remainders(plan, 1, 4, 12)
    resumed = [x for r in range(3) for x in rows(plan, 1, 3, r, [(4, 12)])]
    assert Counter(done) + Counter(resumed) == stream
    assert Counter(resumed) == Counter(left)

    # and again from 3 to 6 ranks, 10 more samples each
    done2, _ = remainders(plan, 1, 3, 10, [(4, 12)])
    resumed2 = [x for r in range(6) for x in rows(plan, 1, 6, r, [(4, 12), (3, 10)])]
    assert Counter(done) + Counter(done2) + Counter(resumed2) == stream


def test_resume_drops_at_most_the_remainder_of_the_new_cut():
    plan = Plan(np.array(UNEVEN), seed=5, window=8)
    done, left = remainders(plan, 0, 2, 20)
    resumed = [x for r in range(5) for x in rows(plan, 0, 5, r, [(2, 20)])]
    assert not set(done) & set(resumed)
    assert set(resumed) <= set(left) and len(left) - len(resumed) < 5


def zipf_images(images: int, tags: int, per_image: tuple[int, ...], seed: int = 0) -> list[list[int]]:
    """Each image carries a few distinct tags drawn with Zipf popularity (1/rank)."""
    gen = np.random.default_rng(seed)
    popularity = 1 / np.arange(1, tags + 1)
    popularity /= popularity.sum()
    drawn = gen.choice(tags, size=(images, max(per_image)), p=popularity)
    sizes = gen.choice(per_image, size=images)
    return [sorted(set(row[:k].tolist())) for row, k in zip(drawn, sizes)]


def shards_of(labels: list[list[int]], per_shard: int) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for start in range(0, len(labels), per_shard):
        part = labels[start:start + per_shard]
        ptr = np.concatenate([[0], np.cumsum([len(x) for x in part])]).astype(np.int64)
        out.append((ptr, np.array([t for x in part for t in x], np.int64)))
    return out


def resampled_plan(parts, num_tags: int, row_rates=None) -> Plan:
    """A plan over in-memory shards, resampled by the fitted weights or by `row_rates(ptr, idx)`."""
    if row_rates is None:
        log_weight, weights = resampling.fit_shards(lambda: parts, num_tags)
        row_rates = functools.partial(resampling.rates, log_weight=log_weight)
    else:
        sums = np.array([row_rates(p, i).sum() for p, i in parts])
        weights = sums * sum(len(p) - 1 for p, _ in parts) / sums.sum()
    return Plan(np.array([len(p) - 1 for p, _ in parts]), seed=0, weights=weights,
                rates=lambda s: row_rates(*parts[s]))


def mean_inverse_sqrt(counts: np.ndarray):
    """The one-tag law applied per image: the mean of 1/sqrt(count) over its tags."""
    inverse = 1 / np.sqrt(np.maximum(counts, 1))
    return lambda ptr, idx: np.add.reduceat(inverse[idx], ptr[:-1]) / np.diff(ptr)


def measured_exponent(plan: Plan, labels: list[list[int]], num_tags: int, epochs: int, least: int) -> float:
    """Slope of log(tag's occurrences in the stream) against log(its image count)."""
    counts = np.bincount([t for x in labels for t in x], minlength=num_tags)
    ptr, idx = shards_of(labels, len(labels))[0]
    drawn = np.concatenate([stream_rows(plan, e) for e in range(epochs)])
    occurrences = np.bincount(idx[np.concatenate([np.arange(ptr[r], ptr[r + 1]) for r in drawn])],
                              minlength=num_tags)
    keep = counts >= least
    return float(np.polyfit(np.log(counts[keep]), np.log(occurrences[keep]), 1)[0])


def test_one_tag_resampling_gives_each_tag_exactly_a_sqrt_share():
    counts = [1600, 400, 100, 25]
    labels = [[t] for t in np.random.default_rng(0).permutation(np.repeat(np.arange(4), counts))]
    plan = resampled_plan(shards_of(labels, 250), 4)
    streams = [stream_rows(plan, e) for e in range(20)]
    measured = np.bincount(np.concatenate(streams), minlength=len(labels))
    per_tag = np.bincount([x[0] for x in labels], weights=measured, minlength=4)
    expected = np.sqrt(counts) / np.sqrt(counts).sum()
    np.testing.assert_allclose(per_tag / per_tag.sum(), expected, rtol=0.03)
    assert abs(np.mean([len(s) for s in streams]) / len(labels) - 1) < 0.01  # epochs keep their length


@pytest.mark.parametrize("per_image", [(2,), (2, 3), (3,)])
def test_multi_tag_resampling_keeps_the_sqrt_law(per_image):
    tags = 300
    labels = zipf_images(30_000, tags, per_image)
    parts = shards_of(labels, 1000)
    fitted = measured_exponent(resampled_plan(parts, tags), labels, tags, epochs=4, least=30)
    counts = np.bincount([t for x in labels for t in x], minlength=tags).astype(float)
    unfitted = measured_exponent(resampled_plan(parts, tags, mean_inverse_sqrt(counts)), labels, tags,
                                 epochs=4, least=30)
    assert abs(fitted - 0.5) < 0.02, fitted
    assert unfitted > 0.56, unfitted  # what the fit corrects


def test_systematic_draws_take_floor_or_ceil_of_each_expected_count():
    rates = np.array([0.5, 3.0, 0.0, 1.7, 2.8])
    for seed in range(20):
        drawn = np.bincount(systematic(rates, 40, np.random.default_rng(seed)), minlength=5)
        expected = 40 * rates / rates.sum()
        assert drawn.sum() == 40 and np.all(np.abs(drawn - expected) < 1) and drawn[2] == 0
    assert len(systematic(np.zeros(3), 5, np.random.default_rng(0))) == 0


def test_stochastic_rounding_is_unbiased():
    counts = stochastic_round(np.full(100_000, 1.3), np.random.default_rng(0))
    assert set(np.unique(counts)) == {1, 2}
    assert abs(counts.mean() - 1.3) < 0.01


def test_repeats_of_an_image_are_spread_over_its_shard():
    rates = np.ones(1000)
    rates[7] = 50.0  # one rare-tag image, drawn ~48 times in its shard
    plan = Plan(np.array([1000]), seed=0, window=1, weights=np.array([1000.0]), rates=lambda s: rates)
    where = np.flatnonzero(rows(plan, 0) == 7)
    assert len(where) in (47, 48) and np.diff(where).min() > 5 and where.max() - where.min() > 900


def test_a_rank_expands_only_the_shards_it_reaches():
    reached = []

    def rates(shard):
        reached.append(shard)
        return np.ones(100)

    plan = Plan(np.full(10_000, 100), seed=1, window=50, weights=np.full(10_000, 100.0), rates=rates)
    order = plan.order(0, 8, 3)
    assert len(order) == 10_000 * 100 // 8 and reached == []
    first = order.rows(0, 120)
    assert len(first) == 120 and 1 <= len(reached) <= 3


def test_spread_keeps_every_draw_and_shuffles_single_copies():
    gen = np.random.default_rng(0)
    drawn = np.repeat(np.arange(50), [1] * 49 + [5])
    out = spread(drawn, gen)
    assert sorted(out) == sorted(drawn) and not np.array_equal(out[:49], np.arange(49))
    assert len(spread(np.zeros(0, np.int64), gen)) == 0
