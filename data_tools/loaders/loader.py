"""The Loader: batches from a `wsl data build` shard directory for any rank, device and phase.

One contract for every backend: iterating a Loader yields (images, targets) per batch,
images a normalised float32 N×3×H×W tensor on the device in channels_last memory (what
convolutions on GPUs and oneDNN CPUs prefer, and what every backend produces without a
copy), targets k-hot float32 N×K for hashtag data or int64 labels for single-label data.
The plan (plan.py) fixes which samples each rank reads in which order, so every rank
yields the same number of batches, and `state_dict()` / `load_state_dict()` resume
exactly where the stream stopped, also on another world size. Samples that cannot be
used are skipped and counted in `bad_samples`; a batch whose image fails to decode keeps
its size, the slot filled with another sample of the batch.

Backends: `dali` (GPU, dali.py), `dali-cpu` and `pil` (worker processes, workers.py);
`auto` takes dali on a GPU and dali-cpu on CPU, the faster CPU backend (bench/loader.py).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import tempfile
import weakref
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from data_tools.common.fields import check_ranges
from data_tools.format import tables
from data_tools.loader_config import LoaderConfig
from data_tools.loaders import catalog as catalogs
from data_tools.loaders import plan as plans
from data_tools.loaders import remote, transforms
from data_tools.loaders.workers import PREFETCH

PHASES = ("train", "eval")


class BatchPlan(NamedTuple):
    """One batch to make: its catalog rows, the seed of its augmentation draws, and the
    planned rows left out because their table marks them unusable (their slots refilled)."""
    rows: np.ndarray
    seed: list[int]
    skipped: list[int]


@dataclass
class BatchPlans:
    """The batches of one pass over a rank's order, made as they are reached; iterable
    again from the start (each worker process walks it and takes its own batches)."""
    catalog: catalogs.Catalog
    order: plans.Order
    start: int
    count: int
    size: int
    seed: list[int]      # [seed, epoch, AUGMENT, run, rank]: a batch adds its start

    def __len__(self) -> int:
        return self.count

    def __iter__(self):
        for s in range(self.start, self.start + self.count * self.size, self.size):
            rows = self.order.rows(s, s + self.size)
            usable = [self.catalog.problem(r) == "" for r in rows]
            skipped = [int(r) for r, ok in zip(rows, usable) if not ok]
            good = rows[usable] if skipped else rows
            yield BatchPlan(np.asarray(transforms.top_up(list(good), len(rows)), np.int64), [*self.seed, s], skipped)


class Batch(tuple):
    """(images, targets); `keys` names the samples, for checks and debugging."""

    def __new__(cls, images: torch.Tensor, targets: torch.Tensor, keys: list[str], rows: np.ndarray):
        batch = super().__new__(cls, (images, targets))
        batch.keys, batch.rows = keys, rows  # rows: catalog rows, to tell wrap-around repeats in eval
        return batch


def dali_available() -> bool:
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str, device: torch.device) -> str:
    if backend == "auto":
        if not dali_available():
            return "pil"
        return "dali" if device.type == "cuda" else "dali-cpu"
    if backend == "dali" and device.type != "cuda":
        raise ValueError("backend 'dali' decodes on a GPU; on CPU use 'dali-cpu' or 'pil'")
    if backend.startswith("dali") and not dali_available():
        raise ValueError(f"backend '{backend}' needs nvidia-dali, which is not installed; use 'pil'")
    return backend


def make_loader(cfg: LoaderConfig, directory: str | Path, rank: int = 0, world_size: int = 1,
                device: str | torch.device = "cpu", phase: str = "train") -> "Loader":
    return Loader(cfg, directory, rank, world_size, device, phase)


class Loader:
    def __init__(self, cfg: LoaderConfig, directory: str | Path, rank: int, world_size: int,
                 device: str | torch.device, phase: str):
        check_ranges(cfg)
        cfg.check()
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {', '.join(PHASES)}, got {phase!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank {rank} of {world_size}")
        self.cfg, self.rank, self.world_size, self.directory = cfg, rank, world_size, directory
        self.device = torch.device(device)
        self.backend = resolve_backend(cfg.backend, self.device)
        self.train = phase == "train"
        self.drop_last = self.train if cfg.drop_last is None else cfg.drop_last
        self.sizes = transforms.Sizes(cfg.image_size, cfg.resize_size, cfg.min_scale)
        self.catalog = c = catalogs.load(directory, self._cache_folder(directory, phase))
        self.num_samples = len(c)  # one epoch of the whole world
        resample = c.multi if cfg.sqrt_resample is None else cfg.sqrt_resample
        weights = rates = None
        if resample and self.train:
            weights = c.fit["shard_weight"]
            rates = functools.partial(c.rates, c.fit["tag_log_weight"])
        self.plan = plans.Plan(c.counts, cfg.seed, self.train, cfg.shuffle_buffer, weights, rates)
        self.epoch, self.runs, self.consumed = 0, [], 0
        self._cached: tuple = ((), None)
        self.prefetch = self._prefetcher() if c.remote else None
        self._failed: dict[str, set[str]] = defaultdict(set)
        if len(self) == 0:
            raise ValueError(f"{self.num_samples} samples give rank {rank} of {world_size} no batch of "
                             f"{cfg.batch_size}: lower batch_size or the world size")

    def _cache_folder(self, directory, phase: str) -> Path | None:
        if not remote.is_url(directory):
            return None
        name = f"{hashlib.sha1(str(directory).encode()).hexdigest()[:12]}-{phase}-rank{self.rank}-{os.getpid()}"
        return Path(self.cfg.cache_dir or tempfile.gettempdir()) / "wsl-shard-cache" / name

    def _prefetcher(self) -> remote.Prefetcher:
        c = self.catalog
        workers = self.cfg.worker_count()
        lookahead = (workers * PREFETCH + 2) * self.cfg.batch_size + max(self.cfg.shuffle_buffer, 1)
        fetcher = remote.Prefetcher(remote.Store(str(self.directory)), c.directory, c.files,
                                    [tables.table_file(f) for f in c.files], c.shard_bytes, c.starts,
                                    self.cfg.cache_gb * 2**30, lookahead)
        weakref.finalize(self, fetcher.close)
        fetcher.follow(self.order(), self.consumed)
        return fetcher

    # --- position in the stream -------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its beginning, unless the loader is already inside it (resumed)."""
        if epoch != self.epoch:
            self.epoch, self.runs, self.consumed = epoch, [], 0

    def state_dict(self) -> dict:
        self._roll()
        return {"epoch": self.epoch, "seed": self.plan.seed, "world_size": self.world_size,
                "consumed": self.consumed, "runs": [list(r) for r in self.runs], "num_samples": self.num_samples}

    def load_state_dict(self, state: dict) -> None:
        if state["num_samples"] != self.num_samples:
            raise ValueError(f"loader state is from a shard set of {state['num_samples']} samples; "
                             f"this one has {self.num_samples}")
        self.plan = dataclasses.replace(self.plan, seed=state["seed"])
        self.epoch, runs = state["epoch"], [tuple(r) for r in state["runs"]]
        if state["world_size"] == self.world_size or state["consumed"] == 0:
            self.runs, self.consumed = runs, state["consumed"]
        else:  # the remainders of the old ranks become the stream of this run
            self.runs, self.consumed = runs + [(state["world_size"], state["consumed"])], 0

    def order(self) -> plans.Order:
        """Catalog rows this rank reads in the current run of the current epoch, from its start
        (`.rows()` makes them all; the loader itself makes them a window at a time)."""
        key = (self.epoch, tuple(self.runs), self.plan.seed)
        if self._cached[0] != key:
            self._cached = (key, self.plan.order(self.epoch, self.world_size, self.rank, self.runs))
        return self._cached[1]

    def __len__(self) -> int:
        """Batches the next iteration yields (the rest of the epoch, after a resume)."""
        left = len(self.order()) - self.consumed
        return left // self.cfg.batch_size if self.drop_last else -(-left // self.cfg.batch_size)

    def _roll(self) -> None:
        """A position at the end of an epoch is the start of the next."""
        if self.consumed and len(self) == 0:
            self.epoch, self.runs, self.consumed = self.epoch + 1, [], 0

    # --- batches -----------------------------------------------------------------------

    def _batch_plans(self) -> BatchPlans:
        return BatchPlans(self.catalog, self.order(), self.consumed, len(self), self.cfg.batch_size,
                    [self.plan.seed, self.epoch, plans.AUGMENT, len(self.runs), self.rank])

    def __iter__(self):
        self._roll()
        planned = self._batch_plans()
        if self.prefetch:
            self.prefetch.follow(planned.order, self.consumed)
        source = self._source(planned)
        try:
            for batch_plan, (images, rows, failed) in zip(planned, source):
                if self.prefetch:
                    self.prefetch.follow(planned.order, self.consumed + len(batch_plan.rows))
                for row in batch_plan.skipped:
                    self._failed[self.catalog.problem(row)].add(self.catalog.key(row))
                self._note_failures(failed, rows)
                self.consumed += len(batch_plan.rows)
                yield Batch(images, self._targets(rows), [self.catalog.key(r) for r in rows], rows)
        finally:
            source.close()
        self._roll()

    def _source(self, planned: BatchPlans):
        workers = self.cfg.worker_count()
        if self.backend == "dali":
            from data_tools.loaders import dali
            seed = int(np.random.default_rng([*planned.seed, planned.start]).integers(2**31))
            return dali.gpu_batches(self.catalog, planned, self.train, self.sizes, workers, self.device, seed)
        from data_tools.loaders import workers as processes
        return processes.batches(self.catalog, planned, self.train, self.sizes, workers, self.device,
                                 use_dali=self.backend == "dali-cpu")

    def _note_failures(self, failed: list[int], rows: np.ndarray) -> None:
        for row in failed:
            self._failed["decode_error"].add(self.catalog.key(row))
        if len(rows) == 0:
            raise RuntimeError(f"no image of a batch decodes (keys {self.catalog.key(failed[0])}...): the shards "
                               f"look damaged; run `wsl data verify {self.catalog.directory}`")

    def _targets(self, rows: np.ndarray) -> torch.Tensor:
        c = self.catalog
        labels = [c.labels(r) for r in rows]
        if c.multi:
            lengths = [len(x) for x in labels]
            cols = np.concatenate(labels).astype(np.int64)
            targets = torch.zeros((len(rows), c.num_classes), dtype=torch.float32)
            targets[torch.from_numpy(np.repeat(np.arange(len(rows)), lengths)), torch.from_numpy(cols)] = 1.0
        else:
            targets = torch.from_numpy(np.array([x[0] for x in labels], np.int64))
        if self.device.type == "cuda":
            targets = targets.pin_memory()  # a copy from pageable memory would block
        return targets.to(self.device, non_blocking=True)

    @property
    def catalog_bad(self) -> int:
        """Samples their tables mark unusable, in the whole set: the same count on every rank."""
        return self.catalog.unusable

    @property
    def decode_failures(self) -> int:
        """Samples this rank failed to decode so far."""
        return len(self._failed["decode_error"])

    @property
    def bad_samples(self) -> Counter:
        """Samples skipped so far: unusable in their table (no JPEG, json or labels) or not decoding."""
        return Counter({k: len(v) for k, v in self._failed.items() if v})
