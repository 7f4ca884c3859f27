"""`wds` backend: WebDataset shards decoded by PIL and transformed by torch in DataLoader workers.

A rank's batches are dealt out to its workers in turn (batch j to worker j mod W), and
the DataLoader hands them back in that same order, so what a rank yields does not depend
on its worker count. Samples are read through the shards' index files (one positioned
read each) instead of webdataset's streaming tar iterator: the plan names the exact
samples a rank reads, and exact resume needs to start in the middle of a shard.
"""
from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from data_tools.images import BadImage
from data_tools.loaders import transforms
from data_tools.loaders.catalog import Catalog, Reader


def cpu_batch(job, read, train: bool, sizes: transforms.Sizes, as_float: bool):
    """(images, rows used, rows that failed) for one planned batch; images uint8 or normalised float."""
    gen = np.random.default_rng(job.seed)
    images, good, failed = [], [], []
    for row in job.rows:
        try:
            images.append(transforms.transform(read(row), train, sizes, gen))
            good.append(row)
        except BadImage:
            failed.append(row)
    n = len(job.rows)
    if not images:
        return torch.empty((0, 3, sizes.image, sizes.image)), np.asarray(good, np.int64), failed
    batch = _empty((n, 3, sizes.image, sizes.image), torch.uint8)
    torch.stack(transforms.top_up(images, n), out=batch)
    if as_float:
        batch = transforms.normalise(batch, out=_empty(batch.shape, torch.float32))
    return batch, np.asarray(transforms.top_up(good, n), np.int64), failed


def _empty(shape, dtype) -> torch.Tensor:
    # A worker's batch goes to the main process through shared memory: allocating it
    # there saves the copy that sending an ordinary tensor would make.
    out = torch.empty(shape, dtype=dtype)
    return out.share_memory_() if get_worker_info() is not None else out


class Batches(IterableDataset):
    def __init__(self, catalog: Catalog, jobs: list, train: bool, sizes: transforms.Sizes, as_float: bool):
        self.catalog, self.jobs, self.train, self.sizes, self.as_float = catalog, jobs, train, sizes, as_float

    def __iter__(self):
        worker = get_worker_info()
        first, step = (worker.id, worker.num_workers) if worker else (0, 1)
        read = Reader(self.catalog)
        try:
            for job in self.jobs[first::step]:
                yield cpu_batch(job, read, self.train, self.sizes, self.as_float)
        finally:
            read.close()


def batches(catalog: Catalog, jobs: list, train: bool, sizes: transforms.Sizes, workers: int, device: torch.device):
    """Yield (images on device, rows, failed rows) per job, in job order."""
    cuda = device.type == "cuda"
    workers = min(workers or os.cpu_count() or 1, len(jobs))
    loader = DataLoader(Batches(catalog, jobs, train, sizes, as_float=not cuda), batch_size=None,
                        num_workers=workers, pin_memory=cuda, prefetch_factor=4 if workers else None)
    for images, rows, failed in loader:
        if cuda:  # uint8 crosses the bus (4x less than float); normalised on the GPU
            images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            images = transforms.normalise(images, out=torch.empty_like(images, dtype=torch.float32))
        yield images, rows, failed
