"""Which samples each rank reads, in which order, in every epoch: pure numpy, no I/O.

The epoch's stream: the shards in an order shuffled by (seed, epoch), each shard's samples
in file order, and with square-root resampling each sample repeated 0, 1, 2... times. The
stream is cut into `world` equal contiguous slices (training drops the remainder, eval
wraps around to fill the last slice), so every rank yields the same number of samples
whatever the shard sizes, and reads a contiguous run of shards: two ranks share at most
the shard at the seam between their slices, and then for different samples. A training
slice is then shuffled inside windows of `window` samples.

Resume: a run that stopped after each of its ranks consumed c samples leaves slice[c:] of
every rank. Those remainders, concatenated in rank order, are the stream that the next run
of the same epoch cuts for its own world size, so a changed world size still yields
exactly the samples not yet consumed. With an unchanged world size a rank simply
continues its slice at c (the loader does that), which keeps the order bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SHARDS, REPEATS, WINDOWS, AUGMENT = range(4)  # independent random streams


def rng(seed: int, epoch: int, stream: int, *more: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, stream, *more])


def sqrt_rates(label_ptr: np.ndarray, label_idx: np.ndarray, tag_counts: np.ndarray) -> np.ndarray:
    """Expected repeats per sample, mean 1, so a tag's share of the stream goes as sqrt(its count).

    A sample's weight is the mean of 1/sqrt(count) over its tags: exactly the law for
    one-tag samples (count * 1/sqrt(count) = sqrt(count)), an approximation for several.
    """
    inverse = 1.0 / np.sqrt(np.maximum(tag_counts, 1.0))
    lengths = np.diff(label_ptr)
    weights = np.add.reduceat(inverse[label_idx], label_ptr[:-1]) / lengths
    return weights * (len(weights) / weights.sum())


def repeats(rates: np.ndarray, gen: np.random.Generator) -> np.ndarray:
    """Stochastic rounding: floor(rate), plus one with probability frac(rate)."""
    whole = np.floor(rates)
    return (whole + (gen.random(len(rates)) < rates - whole)).astype(np.int64)


def cut(stream: np.ndarray, world: int, rank: int, wrap: bool) -> np.ndarray:
    if wrap and len(stream):
        n = -(-len(stream) // world)
        stream = np.resize(stream, n * world)  # repeats from the start
    else:
        n = len(stream) // world
    return stream[rank * n:(rank + 1) * n]


def window_shuffle(order: np.ndarray, window: int, gen: np.random.Generator) -> np.ndarray:
    """Permute inside consecutive windows, so reads stay within a few shards at a time."""
    keys = np.arange(len(order)) // window + gen.random(len(order))
    return order[np.argsort(keys, kind="stable")]


@dataclass(frozen=True)
class Plan:
    starts: np.ndarray              # first row of each shard, then the row count
    seed: int = 0
    train: bool = True              # eval: catalog order, no resampling, wrap instead of drop
    window: int = 10_000            # shuffle window, in samples
    rates: np.ndarray | None = None  # expected repeats per row; None: no resampling

    def stream(self, epoch: int) -> np.ndarray:
        """Every row the epoch visits, repeats included, before the cut into ranks."""
        shards = np.arange(len(self.starts) - 1)
        if self.train:
            shards = rng(self.seed, epoch, SHARDS).permutation(shards)
        rows = np.concatenate([np.arange(self.starts[s], self.starts[s + 1]) for s in shards] or [[]])
        rows = rows.astype(np.int64)
        if self.train and self.rates is not None:
            counts = repeats(self.rates, rng(self.seed, epoch, REPEATS))
            rows = np.repeat(rows, counts[rows])
        return rows

    def slice(self, stream: np.ndarray, world: int, rank: int, epoch: int, run: int) -> np.ndarray:
        part = cut(stream, world, rank, wrap=not self.train)
        if self.train and self.window > 1:
            part = window_shuffle(part, self.window, rng(self.seed, epoch, WINDOWS, run, rank))
        return part

    def order(self, epoch: int, world: int, rank: int, runs: list[tuple[int, int]] = ()) -> np.ndarray:
        """Rank's rows for this run of `epoch`; `runs`: (world size, samples consumed per rank)
        of the earlier runs of the same epoch that had another world size."""
        stream = self.stream(epoch)
        for run, (old_world, consumed) in enumerate(runs):
            stream = np.concatenate([self.slice(stream, old_world, r, epoch, run)[consumed:]
                                     for r in range(old_world)])
        return self.slice(stream, world, rank, epoch, len(runs))
