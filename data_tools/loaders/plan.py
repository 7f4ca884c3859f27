"""Which samples each rank reads, in which order, in every epoch: pure numpy, no I/O.

The plan works on shards, from the manifest's per-shard counts alone, and expands a
shard into sample rows only when a rank reaches it, so neither start-up time nor memory
grows with the number of samples.

The epoch's stream: the shards in an order shuffled by (seed, epoch); shard s contributes
L_s samples: its row count, or with square-root resampling its expected share of the
epoch (resampling.py) rounded stochastically. A shard is expanded into its L_s rows when
reached: with resampling L_s draws proportional to each row's rate (systematic sampling:
each row gets floor or ceil of its expected count), ordered so that the c copies of a row
lie about 1/c of the shard's stretch of the stream apart (`spread`); without, a
permutation of the shard's rows. The stream is cut into
`world` equal contiguous slices (training drops the remainder, eval wraps around to fill
the last slice), so every rank yields the same number of samples whatever the shard sizes
and reads a contiguous run of shards: two ranks share at most the shard at the seam
between their slices, and then for different samples. A training slice is then shuffled
inside consecutive windows of `window` samples, each window made when it is reached.

Resume: a run that stopped after each of its ranks consumed c samples leaves slice[c:] of
every rank. Those remainders, concatenated in rank order, are the stream that the next run
of the same epoch cuts for its own world size, so a changed world size still yields
exactly the samples not yet consumed. A remainder is the rest of one partly read window
(at most `window` rows, held explicitly) and then whole shards' stretches, so it stays as
small as the stream. With an unchanged world size a rank simply continues its slice at c
(the loader does that), which keeps the order bit for bit.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

SHARDS, REPEATS, WINDOWS, AUGMENT, SLOTS = range(5)  # independent random streams
EXPANDED = 8  # shards and windows kept expanded; a rank works on one or two at a time


def rng(seed: int, epoch: int, stream: int, *more: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, stream, *more])


def stochastic_round(values: np.ndarray, gen: np.random.Generator) -> np.ndarray:
    """floor(value), plus one with probability frac(value): unbiased integers."""
    whole = np.floor(values)
    return (whole + (gen.random(len(values)) < values - whole)).astype(np.int64)


def systematic(rates: np.ndarray, draws: int, gen: np.random.Generator) -> np.ndarray:
    """`draws` row numbers, row i about draws * rate_i / sum(rates) times (floor or ceil of
    it): one uniform offset, then evenly spaced points on the rates' cumulative sum."""
    total = rates.sum()
    if draws == 0 or total <= 0:
        return np.zeros(0, np.int64)
    edges = np.cumsum(rates) * (draws / total)
    edges[-1] = draws
    below = np.ceil(edges - gen.random()).astype(np.int64)  # points u + j below each edge
    return np.repeat(np.arange(len(rates)), np.diff(below, prepend=0))


def spread(drawn: np.ndarray, gen: np.random.Generator) -> np.ndarray:
    """Shuffle sorted draws so the c copies of a row sit about 1/c of the way apart: copy j
    of a row gets the key (j + u)/c, u one uniform offset per row, and the rows go in key
    order (a row drawn once gets a uniform key, as in a plain shuffle)."""
    if len(drawn) == 0:
        return drawn
    first = np.flatnonzero(np.diff(drawn, prepend=-1))  # where each row's run of copies starts
    copies = np.diff(first, append=len(drawn))
    copy = np.arange(len(drawn)) - np.repeat(first, copies)
    keys = (copy + np.repeat(gen.random(len(first)), copies)) / np.repeat(copies, copies)
    return drawn[np.argsort(keys, kind="stable")]


@dataclass(frozen=True)
class Stream:
    """A run of rows as pieces (shard, lo, hi): slots lo..hi of the shard's expansion in
    this epoch; a negative shard -1-j means rows held explicitly, extra[j][lo:hi]."""
    pieces: np.ndarray                      # int64 (k, 3)
    extra: tuple[np.ndarray, ...] = ()

    def __len__(self) -> int:
        return int((self.pieces[:, 2] - self.pieces[:, 1]).sum())

    def cut(self, start: int, stop: int) -> "Stream":
        lengths = self.pieces[:, 2] - self.pieces[:, 1]
        ends = np.cumsum(lengths)
        begins = ends - lengths
        keep = (ends > start) & (begins < stop) & (lengths > 0)
        pieces = self.pieces[keep].copy()
        pieces[:, 1] += np.maximum(start - begins[keep], 0)
        pieces[:, 2] -= np.maximum(ends[keep] - stop, 0)
        return Stream(pieces, self.extra)

    @staticmethod
    def join(streams: list["Stream"]) -> "Stream":
        pieces, extra = [], []
        for s in streams:
            moved = s.pieces.copy()
            explicit = moved[:, 0] < 0
            moved[explicit, 0] -= len(extra)  # -1-j becomes -1-(j + extras before it)
            pieces.append(moved)
            extra += s.extra
        return Stream(np.concatenate(pieces or [np.zeros((0, 3), np.int64)]), tuple(extra))

    @staticmethod
    def of_rows(rows: np.ndarray) -> "Stream":
        return Stream(np.array([[-1, 0, len(rows)]], np.int64), (np.asarray(rows, np.int64),))


def cut(stream: Stream, world: int, rank: int, wrap: bool) -> Stream:
    if wrap and len(stream):
        n = -(-len(stream) // world)
        parts = [stream]
        while sum(map(len, parts)) < n * world:  # repeats from the start
            parts.append(stream.cut(0, n * world - sum(map(len, parts))))
        stream = Stream.join(parts)
    else:
        n = len(stream) // world
    return stream.cut(rank * n, (rank + 1) * n)


@dataclass(frozen=True)
class Plan:
    counts: np.ndarray              # rows per shard, in manifest order
    seed: int = 0
    train: bool = True              # eval: catalog order, no resampling, wrap instead of drop
    window: int = 10_000            # shuffle window, in samples
    weights: np.ndarray | None = None  # expected samples per shard and epoch; None: no resampling
    rates: Callable[[int], np.ndarray] | None = None  # a shard's per-row rates, read when reached
    cache: dict = field(default_factory=dict, init=False, compare=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "counts", np.asarray(self.counts, np.int64))
        object.__setattr__(self, "starts", np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64))

    @property
    def resampled(self) -> bool:
        return self.train and self.weights is not None

    def lengths(self, epoch: int) -> np.ndarray:
        """Samples each shard gives this epoch's stream."""
        if not self.resampled:
            return self.counts
        key = ("lengths", epoch)
        if key not in self.cache:
            self.cache.clear()  # a new epoch: nothing of the last one is needed again
            self.cache[key] = stochastic_round(np.asarray(self.weights, np.float64), rng(self.seed, epoch, REPEATS))
        return self.cache[key]

    def stream(self, epoch: int) -> Stream:
        """The epoch's stream, before the cut into ranks."""
        shards = np.arange(len(self.counts))
        if self.train:
            shards = rng(self.seed, epoch, SHARDS).permutation(shards)
        lengths = self.lengths(epoch)[shards]
        return Stream(np.stack([shards, np.zeros_like(shards), lengths], axis=1).astype(np.int64))

    def shard_rows(self, epoch: int, shard: int) -> np.ndarray:
        """The shard's stretch of the epoch's stream, as catalog rows."""
        base, n = self.starts[shard], self.counts[shard]
        if not self.train:
            return base + np.arange(n)
        gen = rng(self.seed, epoch, SLOTS, shard)
        if self.resampled:
            return base + spread(systematic(self.rates(shard), int(self.lengths(epoch)[shard]), gen), gen)
        return base + gen.permutation(n)

    def order(self, epoch: int, world: int, rank: int, runs: list[tuple[int, int]] = ()) -> "Order":
        """Rank's rows for this run of `epoch`; `runs`: (world size, samples consumed per rank)
        of the earlier runs of the same epoch that had another world size."""
        stream = self.stream(epoch)
        for run, (old_world, consumed) in enumerate(runs):
            stream = Stream.join([self.slice(stream, old_world, r, epoch, run).rest(consumed)
                                  for r in range(old_world)])
        return self.slice(stream, world, rank, epoch, len(runs))

    def slice(self, stream: Stream, world: int, rank: int, epoch: int, run: int) -> "Order":
        return Order(self, epoch, cut(stream, world, rank, wrap=not self.train), run, rank)


class Order:
    """A rank's rows for one run of an epoch, made window by window as they are reached."""

    def __init__(self, plan: Plan, epoch: int, stream: Stream, run: int, rank: int):
        self.plan, self.epoch, self.stream, self.run, self.rank = plan, epoch, stream, run, rank
        self.size = len(stream)
        self.shuffled = plan.train and plan.window > 1
        self.span = max(plan.window, 1)
        self.windows: OrderedDict[int, np.ndarray] = OrderedDict()
        self.shards: OrderedDict[int, np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return self.size

    def rows(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        stop = self.size if stop is None else min(stop, self.size)
        first, last = start // self.span, -(-stop // self.span)
        rows = np.concatenate([self.window(w) for w in range(first, last)] or [np.zeros(0, np.int64)])
        return rows[start - first * self.span:stop - first * self.span]

    def window(self, number: int) -> np.ndarray:
        if number not in self.windows:
            rows = self.expand(self.stream.cut(number * self.span, (number + 1) * self.span))
            if self.shuffled:
                p = self.plan
                rows = rng(p.seed, self.epoch, WINDOWS, self.run, self.rank, number).permutation(rows)
            self.windows[number] = rows
            if len(self.windows) > EXPANDED:
                self.windows.popitem(last=False)
        return self.windows[number]

    def expand(self, stream: Stream) -> np.ndarray:
        out = []
        for shard, lo, hi in stream.pieces:
            source = stream.extra[-1 - shard] if shard < 0 else self.shard(int(shard))
            out.append(source[lo:hi])
        return np.concatenate(out or [np.zeros(0, np.int64)]).astype(np.int64)

    def shard(self, shard: int) -> np.ndarray:
        if shard not in self.shards:
            self.shards[shard] = self.plan.shard_rows(self.epoch, shard)
            if len(self.shards) > EXPANDED:
                self.shards.popitem(last=False)
        return self.shards[shard]

    def rest(self, consumed: int) -> Stream:
        """What is left after `consumed` rows, as a stream for the next run to cut."""
        if not self.shuffled or consumed % self.span == 0:
            return self.stream.cut(consumed, self.size)
        boundary = -(-consumed // self.span) * self.span
        return Stream.join([Stream.of_rows(self.rows(consumed, boundary)), self.stream.cut(boundary, self.size)])
