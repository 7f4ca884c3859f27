"""Is a run bound by its data loading or by its model step? Measured for a few seconds each.

The trainer calls `measure(loader, step, seconds)` before training and prints the report.
The loader's position is saved before and restored after, so measuring consumes nothing
of the training stream.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass
class Report:
    loader_ips: float   # images per second the loader yields on its own
    step_ips: float     # images per second the model step takes on its own
    backend: str = ""

    @property
    def bound(self) -> str:
        return "loader" if self.loader_ips < self.step_ips else "model"

    def __str__(self) -> str:
        figures = f"loader ({self.backend}) {self.loader_ips:,.0f} img/s, model step {self.step_ips:,.0f} img/s"
        ratio = self.loader_ips / self.step_ips
        if self.bound == "loader":
            return (f"data loading bounds this run: {figures}; the model waits {1 - ratio:.0%} of the time "
                    "(more loader workers or cores, or backend dali on a GPU)")
        return f"the model bounds this run: {figures}; the loader has {ratio - 1:.0%} headroom"


def _sync(tensor: torch.Tensor) -> None:
    if tensor.is_cuda:
        torch.cuda.synchronize(tensor.device)


def loader_rate(loader, seconds: float) -> float:
    """Images per second of any iterable of (images, targets), read as training reads it:
    epoch after epoch, worker start-ups included. The clock starts after the first batch
    (the one-off start-up) and stops at the first batch past `seconds`, so a small data
    set, whose epochs are a batch or two long, is measured as well as a large one."""
    images, start, tensor = 0, None, None
    epochs = 0
    while True:
        for batch in loader:
            tensor = batch[0]
            if start is None:
                _sync(tensor)
                start = time.perf_counter()
                continue
            images += len(tensor)
            if time.perf_counter() - start >= seconds:
                _sync(tensor)
                return images / (time.perf_counter() - start)
        epochs += 1
        if tensor is None and epochs > 1:
            return 0.0  # an empty loader


def step_rate(step: Callable, batch, seconds: float) -> float:
    images, targets = batch
    step(images, targets)  # warm-up: lazy init, cuDNN autotuning, compilation
    _sync(images)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step(images, targets)
        count += 1
    _sync(images)  # GPU steps queued within the time are all waited for, and counted
    return count * len(images) / (time.perf_counter() - start)


def measure(loader, step: Callable, seconds: float = 3.0) -> Report:
    """Time `step(images, targets)` alone on one of the loader's batches, then the loader
    alone. The step goes first: right after a pass, the loader's workers are still winding
    down and would slow the step down tenfold on a small machine."""
    state = loader.state_dict()
    try:
        batches = iter(loader)
        batch = next(batches, None)
        batches.close()
        if batch is None:
            raise ValueError("the loader yielded no batch to measure")
        batch = tuple(t.clone() for t in batch)  # not a view into the loader's shared buffers
        step_ips = step_rate(step, batch, seconds)
        loader.load_state_dict(state)
        loader_ips = loader_rate(loader, seconds)
    finally:
        loader.load_state_dict(state)
    return Report(loader_ips, step_ips, getattr(loader, "backend", ""))
