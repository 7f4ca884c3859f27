"""Shards on object storage or a web server, read through a bounded local cache.

A shard directory may be a URL (s3://, gs://, http(s)://: whatever fsspec opens; the
storage's own settings, such as AWS_ENDPOINT_URL or ~/.aws, apply). The plan knows which
shards this rank reads and from which position on, so a prefetcher in the training
process downloads them in that order (table, then tar, each renamed into place when
complete) into a local folder, and deletes each once the rank is past the last window that
holds its samples. The backends' positioned reads then run on the local copy; a worker
process that reaches a shard before its download ends waits for it.

The cache holds at most `capacity` bytes of shards ahead of the rank, except what the
next batches need right now (the workers' read-ahead and the current shuffle window),
which is always fetched: a cache too small for that slows nothing down and never stalls.
"""
from __future__ import annotations

import itertools
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

DOWNLOADS = 4      # shards downloaded at once
WAIT_S = 600       # longest a reader waits for a shard before it gives up


def is_url(directory) -> bool:
    return "://" in str(directory)


class Store:
    """The remote directory, for downloads (its small files: shards.read_remote)."""

    def __init__(self, url: str):
        import fsspec

        self.url = url.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.url)

    def download(self, name: str, folder: Path) -> None:
        target = folder / name
        tmp = folder / f".{name}.part"
        self.fs.get_file(f"{self.root}/{name}", str(tmp))
        os.replace(tmp, target)


def wait_for(path: Path) -> Path:
    """A shard file the prefetcher is fetching: there once renamed into place."""
    deadline = time.monotonic() + WAIT_S
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path.name} was not downloaded within {WAIT_S} s (is the storage reachable?)")
        time.sleep(0.005)
    return path


class Prefetcher:
    """Keeps the shards a rank reads next in the cache folder, in the order it reads them."""

    def __init__(self, store: Store, folder: Path, files: list[str], tables: list[str], sizes: np.ndarray,
                 starts: np.ndarray, capacity: float, lookahead: int):
        self.store, self.folder, self.files, self.tables = store, folder, files, tables
        self.sizes, self.starts, self.capacity, self.lookahead = sizes, starts, capacity, lookahead
        self.pool = ThreadPoolExecutor(DOWNLOADS, thread_name_prefix="shard-download")
        self.order, self.schedule, self.first, self.done = None, [], 0, {}
        self.present: dict[int, object] = {}  # shard -> its download's future
        self.error: BaseException | None = None

    def follow(self, order, consumed: int) -> None:
        """The rank is at `consumed` in `order`: evict what it is past, fetch what comes.
        Costs the shards in the cache, not the shards of the epoch: it runs every batch."""
        if self.error is not None:
            raise self.error
        if order is not self.order:
            self.order, self.schedule, self.first = order, schedule(order, self.starts), 0
            self.done = {shard: done for shard, _, done in self.schedule}
        for shard in [s for s in self.present if self.done.get(s, 0) <= consumed]:
            self._evict(shard)
        while self.first < len(self.schedule) and self.schedule[self.first][2] <= consumed:
            self.first += 1
        ahead = 0
        for shard, need, done in itertools.islice(self.schedule, self.first, None):
            if done <= consumed:
                continue
            if need > consumed + self.lookahead and ahead + self.sizes[shard] > self.capacity:
                break
            ahead += self.sizes[shard]
            if shard not in self.present:
                self.present[shard] = self.pool.submit(self._fetch, shard)

    def _fetch(self, shard: int) -> None:
        try:
            self.store.download(self.tables[shard], self.folder)
            self.store.download(self.files[shard], self.folder)
        except BaseException as err:  # noqa: BLE001 - raised in the training thread at the next batch
            self.error = err
            raise

    def _evict(self, shard: int) -> None:
        future = self.present.pop(shard)
        future.result()
        for name in (self.files[shard], self.tables[shard]):
            (self.folder / name).unlink(missing_ok=True)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(self.folder, ignore_errors=True)


def schedule(order, starts: np.ndarray) -> list[tuple[int, int, int]]:
    """(shard, first sample position that may need it, position after which it is done)
    for each shard the order reads, in the order it is first needed. A shard's samples
    are shuffled within whole windows, so it is needed from the start of the first window
    it touches until the end of the last."""
    span, pieces = order.span, order.stream.pieces
    ends = np.cumsum(pieces[:, 2] - pieces[:, 1])
    begins = ends - (pieces[:, 2] - pieces[:, 1])
    spans: dict[int, list[int]] = {}
    for (shard, lo, hi), b, e in zip(pieces, begins, ends):
        if hi <= lo:
            continue
        need, done = int(b // span * span), int(-(-e // span) * span)
        if shard >= 0:
            shards = [int(shard)]
        else:  # rows held explicitly (a resumed run's partial window): whichever shards they are in
            rows = order.stream.extra[-1 - shard][lo:hi]
            shards = np.unique(np.searchsorted(starts, rows, side="right") - 1).tolist()
        for s in shards:
            first, last = spans.get(s, (need, done))
            spans[s] = [min(first, need), max(last, done)]
    return sorted(((s, n, d) for s, (n, d) in spans.items()), key=lambda x: (x[1], x[0]))
