"""`dali` (GPU) and `dali-cpu` backends: NVIDIA DALI decodes the planned samples.

The plan's samples go in through fn.external_source, their JPEG bytes read through the
shards' index files, rather than through readers.webdataset: that reader picks its own
order and shard split (no exact resume, no equal per-rank counts), and an image it cannot
decode would stop it. DALI fails only the iteration that holds a bad image and goes on,
so the fed batches are kept in order and the failed one is redone on the CPU path, which
skips and counts the bad sample.

GPU (in the training process, DALI's own threads): random-crop ROI decode on the "mixed"
device (nvJPEG decodes only the crop window), resize and crop_mirror_normalize on the GPU
into float HWC, copied device to device into a torch tensor whose N×3×H×W view is
channels_last. CPU (one pipeline per DataLoader worker, see workers.py): DALI decodes only
the crop window (libjpeg-turbo ROI decode); torch resizes, flips and normalises, because
DALI's CPU resize costs three to four times torch's uint8 path.
"""
from __future__ import annotations

import functools
import io
import itertools
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import numpy as np
import torch
from nvidia.dali import Pipeline, fn, types
from nvidia.dali.plugin.pytorch import feed_ndarray
from PIL import Image

from data_tools.loaders import transforms
from data_tools.loaders.catalog import Catalog, Reader

READ_THREADS = 4  # JPEG reads in flight per pipeline


def jpeg_intact(data: np.ndarray) -> bool:
    """Whether a JPEG's framing is whole: start of image, well-formed marker segments up to
    the start of scan, end of image at the end. DALI's CPU decoder crashes the process on some
    damaged headers (zeroed, overwritten) instead of raising; such a batch goes to the CPU
    path. A few µs an image; damage inside the entropy-coded data decoders survive."""
    b = memoryview(data).cast("B")
    if len(b) < 4 or b[:2] != b"\xff\xd8" or b"\xff\xd9" not in bytes(b[-32:]):  # some writers pad after EOI
        return False
    i = 2
    while i + 4 <= len(b):
        if b[i] != 0xFF:
            return False
        marker = b[i + 1]
        if marker == 0xFF:                       # fill byte before a marker
            i += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD8:   # markers without a length
            i += 2
        else:
            length = int.from_bytes(b[i + 2:i + 4], "big")
            if length < 2:
                return False
            if marker == 0xDA:                   # start of scan: the entropy-coded data follows
                return i + 2 + length <= len(b)
            i += 2 + length
    return False


@functools.cache
def placeholder() -> np.ndarray:
    """A valid 8x8 JPEG, fed to DALI in place of each image of a batch that holds a
    damaged one (jpeg_intact)."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "JPEG")
    return np.frombuffer(buf.getvalue(), np.uint8)


class Feed:
    """external_source callback: the next plan's JPEG bytes; remembers the plans in flight.

    The reads of the next `ahead` plans run on a thread pool while DALI decodes (os.pread
    releases the GIL): read serially inside pipe.run(), 1-5 ms a file on a parallel file
    system would add tens to hundreds of ms to every batch. Each thread keeps its own
    Reader, so no thread closes a file another is reading."""

    def __init__(self, plans, catalog: Catalog, threads: int, ahead: int = 3):
        self.plans, self.catalog, self.ahead = iter(plans), catalog, ahead
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="jpeg-read")
        self.local, self.readers = threading.local(), []
        self.queued: deque = deque()   # (plan, futures of (JPEG bytes, intact)), read ahead
        self.pending: deque = deque()  # (plan, damaged) handed to DALI, not yet out of pipe.run()

    def _read(self, row: int) -> tuple[np.ndarray, bool]:
        read = getattr(self.local, "read", None)
        if read is None:
            read = self.local.read = Reader(self.catalog)
            self.readers.append(read)
        data = np.frombuffer(read(row), np.uint8)
        return data, jpeg_intact(data)  # checked here, off the thread that feeds DALI

    def _fill(self) -> None:
        while len(self.queued) < self.ahead:
            plan = next(self.plans, None)
            if plan is None:
                return
            self.queued.append((plan, [self.pool.submit(self._read, row) for row in plan.rows]))

    def __call__(self) -> list[np.ndarray]:
        self._fill()
        if not self.queued:
            raise StopIteration  # ends DALI's epoch
        plan, reads = self.queued.popleft()
        self._fill()
        data, intact = zip(*(r.result() for r in reads))
        damaged = not all(intact)  # the CPU path redoes it
        self.pending.append((plan, damaged))
        return [placeholder()] * len(data) if damaged else list(data)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        for read in self.readers:
            read.close()


def pipeline(feed: Feed, batch_size: int, train: bool, sizes: transforms.Sizes, threads: int,
             device_id: int | None, seed: int) -> Pipeline:
    on_gpu = device_id is not None
    pipe = Pipeline(batch_size=batch_size, num_threads=threads, device_id=device_id, seed=seed,
                    prefetch_queue_depth=2)
    with pipe:
        jpegs = fn.external_source(source=feed, batch=True, dtype=types.UINT8, ndim=1)
        decoder = "mixed" if on_gpu else "cpu"
        if train:
            # libjpeg-turbo's fast integer IDCT (CPU only): ~10% off the decode, invisible
            # under random crops and resizing; eval keeps the exact IDCT.
            images = fn.decoders.image_random_crop(
                jpegs, device=decoder, output_type=types.RGB, random_area=[sizes.min_scale, 1.0],
                random_aspect_ratio=list(transforms.RATIO), num_attempts=10, use_fast_idct=True)
        else:
            images = fn.decoders.image(jpegs, device=decoder, output_type=types.RGB)
        if on_gpu:
            images = _gpu_finish(images, train, sizes)
        pipe.set_outputs(images)
    return pipe


def _gpu_finish(images, train: bool, sizes: transforms.Sizes):
    common = dict(dtype=types.FLOAT, output_layout="HWC", mean=list(transforms.MEAN), std=list(transforms.STD))
    if train:
        images = fn.resize(images, resize_x=sizes.image, resize_y=sizes.image)
        return fn.crop_mirror_normalize(images, mirror=fn.random.coin_flip(), **common)
    images = fn.resize(images, resize_shorter=sizes.resize)
    return fn.crop_mirror_normalize(images, crop=(sizes.image, sizes.image), **common)


def gpu_batches(catalog: Catalog, plans, train: bool, sizes: transforms.Sizes, threads: int,
                device: torch.device, seed: int):
    """Yield (images on the GPU, rows, failed rows) per plan of `plans` (a loader's BatchPlans), in order."""
    device_id = device.index if device.index is not None else torch.cuda.current_device()

    def finish(out, plan):
        return _to_torch(out, device), plan.rows, []

    def redo(plan, err):
        images, rows, failed = _redo_on_cpu(plan, read, train, sizes, err)
        return transforms.normalise(images.to(device)), rows, failed

    read = Reader(catalog)
    try:
        if len(plans):
            yield from _drive(iter(plans), plans.size, catalog, read, train, sizes, threads, device_id, seed,
                              finish, redo)
    finally:
        read.close()


def cpu_batches(catalog: Catalog, plans: Iterator, batch_size: int, train: bool, sizes: transforms.Sizes,
                slots: Iterator[torch.Tensor]):
    """In a worker process: (uint8 images, rows, failed rows) per plan, each batch written into
    the next of `slots`; DALI decodes on one thread."""

    def finish(out, plan):
        return _cpu_finish(out, plan, train, sizes, next(slots)), plan.rows, []

    def redo(plan, err):
        return _redo_on_cpu(plan, read, train, sizes, err, next(slots))

    first = next(plans, None)
    if first is None:
        return
    read = Reader(catalog)
    seed = int(np.random.default_rng(first.seed).integers(2**31))
    try:
        yield from _drive(itertools.chain([first], plans), batch_size, catalog, read, train, sizes, 1, None, seed,
                          finish, redo)
    finally:
        read.close()


def _drive(plans: Iterator, batch_size: int, catalog, read, train, sizes, threads, device_id, seed, finish, redo):
    """Run pipelines over `plans`: a plan DALI fails is redone by `redo`, and a new pipeline
    takes over the plans fed to the old one and not yet out. After a failed iteration DALI
    may also fail the iteration it had prefetched, whose images are sound (two bad images
    in a batch of 64 did), so the old pipeline's later outputs are not trusted."""
    for rebuilds in itertools.count():
        feed = Feed(plans, catalog, READ_THREADS)
        try:
            pipe = pipeline(feed, batch_size, train, sizes, threads, device_id, (seed + rebuilds) % 2**31)
            pipe.build()
            while True:
                try:
                    (out,) = pipe.run()
                except StopIteration:
                    return
                except RuntimeError as err:  # this iteration held an image DALI could not decode
                    failed = err
                    break
                plan, damaged = feed.pending.popleft()
                yield redo(plan, None) if damaged else finish(out, plan)
            yield redo(feed.pending.popleft()[0], failed)
            plans = itertools.chain([plan for plan, _ in (*feed.pending, *feed.queued)], feed.plans)
        finally:
            feed.close()


def _to_torch(out, device: torch.device) -> torch.Tensor:
    dense = out.as_tensor()
    images = torch.empty(dense.shape(), dtype=torch.float32, device=device)
    feed_ndarray(dense, images, cuda_stream=torch.cuda.current_stream(device))
    return images.permute(0, 3, 1, 2)  # N×H×W×3 memory seen as N×3×H×W: channels_last


def _cpu_finish(out, plan, train: bool, sizes: transforms.Sizes, batch: torch.Tensor) -> torch.Tensor:
    gen = np.random.default_rng(plan.seed)
    for i in range(len(out)):
        image = torch.from_numpy(np.asarray(out[i])).permute(2, 0, 1)  # DALI's buffer, valid until next run()
        box = None if train else transforms.centre_box(image.shape[1], image.shape[2], sizes)
        batch[i] = transforms.resize(image, box, sizes.image, train and gen.random() < 0.5)
    return batch[:len(out)]


def _redo_on_cpu(plan, read: Reader, train: bool, sizes: transforms.Sizes, err: Exception | None,
                 out: torch.Tensor | None = None):
    images, rows, failed = transforms.pil_batch(plan, read, train, sizes, out)
    if not failed and err is not None:
        raise err  # every image decodes with PIL: the error was not a bad sample
    return images, rows, failed
