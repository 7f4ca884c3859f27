"""Every sample of a shard directory: where its JPEG lies, and its labels, read lazily.

Loading reads only the manifest (per-shard counts, tag counts); each shard's sample table
(data_tools/format/tables.py) is memory-mapped when a rank first reaches that shard, so start-up
and memory do not grow with the data set. A backend reads a sample with one positioned
read and never parses a tar: that is what lets a rank start anywhere in a shard (exact
resume) and read only its own samples. Rows are numbered across shards in manifest order;
a row the table marks unusable (no JPEG, no json, no labels) is skipped and counted.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data_tools.format import resampling, shards, tables
from data_tools.loaders import remote

OPEN_FILES = 64  # shard files and tables a reader keeps open; a rank reads a handful at a time


@dataclass
class Catalog:
    directory: Path
    files: list[str]          # shard tar names, in manifest order
    counts: np.ndarray        # int64 [shards]: rows of each shard
    shard_bytes: np.ndarray   # int64 [shards]: size of each tar
    starts: np.ndarray        # int64 [shards + 1]: first row of each shard
    num_classes: int
    multi: bool               # hashtag data (k-hot targets) or single-label (int64)
    fit: dict                 # resampling.py's fit: weights, and the count of unusable rows
    remote: bool = False      # `directory` is the local cache of a URL: files appear as downloaded
    open: OrderedDict = field(default_factory=OrderedDict, repr=False)

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def unusable(self) -> int:
        """Rows the tables mark unusable, in the whole set."""
        return self.fit["unusable"]

    def __getstate__(self) -> dict:  # worker processes map the tables themselves
        return {**self.__dict__, "open": OrderedDict()}

    def shard_of(self, row: int) -> int:
        return int(np.searchsorted(self.starts, int(row), side="right") - 1)

    def table(self, shard: int) -> tables.Table:
        table = self.open.pop(shard, None)
        if table is None:
            table = self._map(shard)
            if len(self.open) >= OPEN_FILES:
                self.open.popitem(last=False)
        self.open[shard] = table
        return table

    def path(self, name: str) -> Path:
        """A shard file's local path; from a URL, once the prefetcher has it (remote.py)."""
        return remote.wait_for(self.directory / name) if self.remote else self.directory / name

    def _map(self, shard: int) -> tables.Table:
        path = self.path(tables.table_file(self.files[shard]))
        if not path.is_file():
            raise FileNotFoundError(f"{path.name} is missing (shards built before sample tables): "
                                    f"run `wsl data index {self.directory}`")
        table = tables.Table(path)
        if len(table) != self.counts[shard]:
            raise ValueError(f"{path.name} has {len(table)} rows, the manifest says {self.counts[shard]}: "
                             f"run `wsl data verify {self.directory}`")
        return table

    def _at(self, row: int) -> tuple[tables.Table, int]:
        shard = self.shard_of(row)
        return self.table(shard), int(row - self.starts[shard])

    def locate(self, row: int) -> tuple[int, int, int]:
        """(shard, JPEG offset, JPEG size) of a row."""
        table, local = self._at(row)
        return self.shard_of(row), int(table.offset[local]), int(table.size[local])

    def key(self, row: int) -> str:
        table, local = self._at(row)
        return table.key(local)

    def labels(self, row: int) -> np.ndarray:
        table, local = self._at(row)
        return table.labels(local)

    def problem(self, row: int) -> str:
        """Why the row is unusable, or ''."""
        table, local = self._at(row)
        return tables.BAD_REASONS[table.bad[local]]

    def rates(self, log_weight: np.ndarray, shard: int) -> np.ndarray:
        """A shard's per-row resampling rates (resampling.py); 0 for unusable rows."""
        t = self.table(shard)
        return np.where(t.bad == 0, resampling.rates(t.label_ptr, t.label_idx, log_weight), 0.0)


def load(directory: str | Path, cache: Path | None = None) -> Catalog:
    """The catalog of a shard directory, or of a URL whose shards `cache` will receive."""
    manifest = shards.read_manifest(directory)
    if remote.is_url(directory):
        if cache is None:
            raise ValueError(f"{directory}: reading shards from a URL needs a local cache folder")
        cache.mkdir(parents=True, exist_ok=True)
        remote.Store(str(directory)).download(resampling.FILE, cache)
        local = cache
    else:
        local = Path(directory)
    entries = manifest["shards"]
    counts = np.fromiter((e["samples"] for e in entries), np.int64, len(entries))
    if counts.sum() == 0:
        raise ValueError(f"{directory} holds no sample")
    catalog = Catalog(
        directory=local, files=[e["file"] for e in entries], counts=counts,
        shard_bytes=np.fromiter((e["bytes"] for e in entries), np.int64, len(entries)),
        starts=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), num_classes=manifest["num_classes"],
        multi=manifest["label_type"] == "multi", fit={}, remote=remote.is_url(directory))
    if not catalog.remote:
        catalog._map(int(np.argmax(counts > 0)))  # shards without tables: say so now, not at the first batch
    header, arrays = resampling.load(local, manifest)
    catalog.fit = {"unusable": header["unusable"], **arrays}
    return catalog


class Reader:
    """Positioned reads of JPEG bytes, keeping the most recently used shard files open."""

    def __init__(self, catalog: Catalog):
        self.catalog = catalog
        self.open: OrderedDict[int, int] = OrderedDict()

    def __call__(self, row: int) -> bytes:
        shard, offset, size = self.catalog.locate(row)
        return os.pread(self._fd(shard), size, offset)

    def _fd(self, shard: int) -> int:
        fd = self.open.pop(shard, None)
        if fd is None:
            fd = os.open(self.catalog.path(self.catalog.files[shard]), os.O_RDONLY)
            if len(self.open) >= OPEN_FILES:
                os.close(self.open.popitem(last=False)[1])
        self.open[shard] = fd
        return fd

    def close(self) -> None:
        for fd in self.open.values():
            os.close(fd)
        self.open.clear()
