"""The CPU backends' processes: DataLoader workers that each make every W-th batch.

`pil` decodes with PIL (transforms.pil_batch); `dali-cpu` runs a one-thread DALI pipeline
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

import contextlib
import ctypes
import functools
import multiprocessing.context
import signal
import time
from multiprocessing import popen_fork

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from data_tools.common.signals import STOP_SIGNALS
from data_tools.loaders import transforms
from data_tools.loaders.catalog import Catalog, Reader

PREFETCH = 2  # batches each worker may have ready ahead of the main process


class Ring:
    """uint8 batch slots in shared memory, made before the workers start.

    A worker writes batch j into slot j mod slots and sends only (slot, rows): sending each
    batch as a new tensor would cost a shared-memory segment, a file-descriptor handshake
    and fresh page faults per batch, which on a small machine is more than the main
    process's whole share of the work. The main process counts the batches it has copied
    out; a worker waits for that count before it overwrites a slot.
    """

    def __init__(self, slots: int, shape: tuple[int, ...]):
        self.data = torch.zeros((slots, *shape), dtype=torch.uint8).share_memory_()
        self.done = torch.zeros(1, dtype=torch.int64).share_memory_()

    def slot(self, number: int) -> torch.Tensor:
        while int(self.done[0]) <= number - len(self.data):
            time.sleep(0.0005)
        return self.data[number % len(self.data)]


class Batches(IterableDataset):
    def __init__(self, catalog: Catalog, plans, train: bool, sizes: transforms.Sizes, use_dali: bool,
                 ring: Ring):
        self.catalog, self.plans, self.train, self.sizes = catalog, plans, train, sizes
        self.use_dali, self.ring = use_dali, ring

    def __iter__(self):
        worker = get_worker_info()
        first, step = worker.id, worker.num_workers
        numbers = range(first, len(self.plans), step)
        mine = (plan for j, plan in enumerate(self.plans) if j % step == first)
        if self.use_dali:
            from data_tools.loaders import dali
            made = dali.cpu_batches(self.catalog, mine, self.plans.size, self.train, self.sizes,
                                    (self.ring.slot(j) for j in numbers))
        else:
            made = self._pil(zip(numbers, mine))
        for j, (images, rows, failed) in zip(numbers, made):
            yield j % len(self.ring.data), rows, failed

    def _pil(self, numbered_plans):
        read = Reader(self.catalog)
        try:
            for j, plan in numbered_plans:
                yield transforms.pil_batch(plan, read, self.train, self.sizes, self.ring.slot(j))
        finally:
            read.close()


class _KillOnTerminate(popen_fork.Popen):
    def terminate(self):
        self.kill()


class WorkerProcess(multiprocessing.context.ForkProcess):
    """A loader worker that terminate() kills: it ignores SIGTERM (ignore_stop_signals), so
    the SIGTERM of DataLoader's shutdown, and of multiprocessing's at interpreter exit,
    left it alive; and the exit, which joins every child, hung after an error in the
    training process (seen when a decoder crashed one worker and the other waited on)."""

    @staticmethod
    def _Popen(process_obj):
        return _KillOnTerminate(process_obj)


class WorkerContext(multiprocessing.context.ForkContext):
    Process = WorkerProcess


def ignore_stop_signals(worker_id: int) -> None:
    """Ctrl-C and SLURM's signals reach every process of the job: the training process
    decides when to stop (after a checkpoint), so a worker must not die under it first.
    A worker still ends with its parent (DataLoader's watchdog)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    # Born with them blocked (stop_signals_held): one that came meanwhile is dropped now.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


@contextlib.contextmanager
def stop_signals_held():
    """The stop signals blocked while DataLoader forks its workers. torch gives a new worker
    a SIGTERM handler that dies before worker_init_fn (ignore_stop_signals) runs, and a
    signal to the whole group in that moment killed it and, through DataLoader's error, the
    run. A child inherits the block, so such a signal waits and is dropped; this process
    gets its own when the block ends."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


@functools.cache
def recycle_large_blocks() -> None:
    """glibc gives every freed block over 32 MiB straight back to the kernel, so each
    batch's float tensor (38.5 MB at 64×224²) would be page-faulted in anew, a quarter
    of the per-image budget on a small machine. Raising its mmap and trim thresholds
    (M_MMAP_THRESHOLD, M_TRIM_THRESHOLD) lets the heap reuse such blocks."""
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)  # glibc only
    if mallopt is not None:
        mallopt(-3, 1 << 30)
        mallopt(-1, 1 << 30)


def pin(data: torch.Tensor) -> bool:
    """Page-lock the ring's shared memory, so the GPU's copy engine reads it directly and
    a copy from it need not block the training thread; False where CUDA refuses (the
    copies then block, as from any pageable memory)."""
    cudart = torch.cuda.cudart()
    return cudart.cudaHostRegister(data.data_ptr(), data.numel() * data.element_size(), 0) == cudart.cudaError.success


def batches(catalog: Catalog, plans, train: bool, sizes: transforms.Sizes, workers: int,
            device: torch.device, use_dali: bool):
    """Yield (images on device, rows, failed rows) per plan of `plans` (a loader's BatchPlans), in order.

    On a GPU, a batch's uint8 slot (4x fewer bytes than float) is copied without blocking
    from pinned memory; the slot is given back to the workers one batch later, once its
    copy is known to be done."""
    if not len(plans):
        return
    cuda = device.type == "cuda"
    if not cuda:
        recycle_large_blocks()
    workers = min(workers, len(plans))
    ring = Ring(workers * PREFETCH + 1 + cuda, (plans.size, sizes.image, sizes.image, 3))
    pinned = cuda and pin(ring.data)
    copied = None  # on a GPU: the last batch's copy, whose slot is still held
    data = Batches(catalog, plans, train, sizes, use_dali, ring)
    # Imported before the fork, though only the workers' transforms.resize uses it: a first
    # import in a forked worker runs W&B's import hooks there, which raise ForkedError.
    import torchvision.transforms.v2.functional  # noqa: F401
    with stop_signals_held():  # creating the iterator forks the workers
        produced = iter(DataLoader(data, batch_size=None, num_workers=workers, prefetch_factor=PREFETCH,
                                   worker_init_fn=ignore_stop_signals, multiprocessing_context=WorkerContext()))
    try:
        for slot, rows, failed in produced:
            images = ring.data[slot][:len(rows)]
            if cuda:
                images = images.to(device, non_blocking=pinned)
                if copied is not None:
                    copied.synchronize()
                    ring.done += 1
                copied = torch.cuda.Event()
                copied.record()
            images = transforms.normalise(images)
            if not cuda:
                ring.done += 1  # copied out: the slot may be reused
            yield images, rows, failed
    finally:
        if pinned:
            if copied is not None:
                copied.synchronize()
            torch.cuda.cudart().cudaHostUnregister(ring.data.data_ptr())
