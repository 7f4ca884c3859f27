"""The CPU backends' processes: DataLoader workers that each make every W-th batch.

`wds` decodes with PIL (transforms.pil_batch); `dali-cpu` runs a one-thread DALI pipeline
in each worker (dali.cpu_batches), whose libjpeg-turbo ROI decode only decodes the crop
window. Batch j goes to worker j mod W and the DataLoader hands the batches back in that
order, so what a rank yields does not depend on its worker count. Worker processes (not
threads) keep the decode and the torch ops off the training process, whose own torch
threads would otherwise fight them for the cores.

Samples are read through the shards' index files (one positioned read each) instead of
webdataset's streaming tar iterator: the plan names the exact samples a rank reads, and
exact resume starts in the middle of a shard.
"""
from __future__ import annotations

import os

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from data_tools.loaders import transforms
from data_tools.loaders.catalog import Catalog, Reader


class Batches(IterableDataset):
    def __init__(self, catalog: Catalog, jobs: list, train: bool, sizes: transforms.Sizes,
                 use_dali: bool, as_float: bool):
        self.catalog, self.jobs, self.train, self.sizes = catalog, jobs, train, sizes
        self.use_dali, self.as_float = use_dali, as_float

    def __iter__(self):
        worker = get_worker_info()
        mine = self.jobs[worker.id::worker.num_workers] if worker else self.jobs
        if self.use_dali:
            from data_tools.loaders import dali
            yield from dali.cpu_batches(self.catalog, mine, self.train, self.sizes, self.as_float)
            return
        read = Reader(self.catalog)
        try:
            for job in mine:
                yield transforms.pil_batch(job, read, self.train, self.sizes, self.as_float)
        finally:
            read.close()


def batches(catalog: Catalog, jobs: list, train: bool, sizes: transforms.Sizes, workers: int,
            device: torch.device, use_dali: bool):
    """Yield (images on device, rows, failed rows) per job, in job order."""
    cuda = device.type == "cuda"
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    data = Batches(catalog, jobs, train, sizes, use_dali, as_float=not cuda)
    loader = DataLoader(data, batch_size=None, num_workers=workers, pin_memory=cuda, prefetch_factor=4)
    for images, rows, failed in loader:
        if cuda:  # uint8 crosses the bus (4x less than float) and is normalised on the GPU
            images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            images = transforms.normalise(images, out=torch.empty_like(images, dtype=torch.float32))
        yield images, rows, failed
