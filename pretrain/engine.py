"""The training loop, shared by pretraining and fine-tuning. Read it top to bottom.

One optimiser step = `accum_steps` micro-batches per rank; DDP synchronises gradients on
the last one only. Everything is scheduled in images seen. A step whose gradient is not
finite is skipped (on every rank alike: the norm is taken after DDP's all-reduce).
A SIGTERM/SIGUSR1 (SLURM preemption) ends the run at the next step with a checkpoint.
"""
from __future__ import annotations

import contextlib
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from pretrain import checkpoint, dist
from pretrain.optim import set_lr


class NonFiniteLoss(RuntimeError):
    pass


@dataclass
class Progress:
    images_seen: int = 0
    steps: int = 0
    bad_steps: int = 0          # all non-finite steps skipped so far
    bad_in_row: int = 0


@dataclass
class Job:
    """What the loop needs; built by pretrain.train or finetune.train."""
    model: torch.nn.Module             # DDP-wrapped when world_size > 1
    module: torch.nn.Module            # the bare model (what checkpoints hold)
    optimizer: torch.optim.Optimizer
    loader: object                     # data_tools.loaders.Loader
    loss_fn: Callable
    lr_at: Callable[[int], float]      # images seen -> learning rate
    env: dist.DistEnv
    device: torch.device
    run_dir: Path
    total_images: int
    global_batch: int
    accum_steps: int
    bf16: bool
    max_bad_steps: int
    log_every: int
    checkpoint_every: int
    keep: int
    config: dict
    loggers: object                    # pretrain.loggers.Loggers
    evaluate: Callable[[], dict] | None = None
    eval_every: int = 0


class StopFlag:
    """Set by SIGTERM/SIGUSR1; checked between steps so a checkpoint is never half a step."""

    def __init__(self):
        self.raised = False
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._set)

    def _set(self, signum, frame):
        self.raised = True


def batches(job: Job):
    """Endless batches: the loader moves to the next epoch (reshuffled) when one ends, and
    its state, restored from a checkpoint, says where in which epoch to go on."""
    while True:
        yield from job.loader


def train_step(job: Job, stream, progress: Progress) -> dict:
    lr = job.lr_at(progress.images_seen)
    set_lr(job.optimizer, lr)
    loss_sum, wait = torch.zeros((), device=job.device), 0.0
    for micro in range(job.accum_steps):
        t0 = time.perf_counter()
        images, targets = next(stream)
        wait += time.perf_counter() - t0
        last = micro == job.accum_steps - 1
        sync = contextlib.nullcontext() if last or not hasattr(job.model, "no_sync") else job.model.no_sync()
        with sync, torch.autocast(job.device.type, torch.bfloat16, enabled=job.bf16):
            loss = job.loss_fn(job.model(images), targets) / job.accum_steps
            loss.backward()
        loss_sum += loss.detach()
    params = [p for p in job.module.parameters() if p.grad is not None]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, float("inf"))
    if torch.isfinite(grad_norm):
        job.optimizer.step()
        progress.bad_in_row = 0
    else:
        progress.bad_steps += 1
        progress.bad_in_row += 1
    job.optimizer.zero_grad(set_to_none=True)
    progress.images_seen += job.global_batch
    progress.steps += 1
    return {"loss": loss_sum, "lr": lr, "grad_norm": grad_norm, "wait": wait}


def save(job: Job, progress: Progress) -> None:
    if job.env.is_main:
        state = {"model": job.module.state_dict(), "optimizer": job.optimizer.state_dict(),
                 "loader": job.loader.state_dict(), "progress": asdict(progress),
                 "rng": checkpoint.rng_state(), "config": job.config}
        checkpoint.save(state, job.run_dir, progress.images_seen, job.keep)
    dist.barrier()


def restore(job: Job, progress: Progress, state: dict) -> None:
    job.module.load_state_dict(state["model"])
    job.optimizer.load_state_dict(state["optimizer"])
    job.loader.load_state_dict(state["loader"])
    for key, value in state["progress"].items():
        setattr(progress, key, value)
    checkpoint.set_rng_state(state["rng"])


def crossed(before: int, after: int, every: int) -> bool:
    return every > 0 and before // every != after // every


def train(job: Job, progress: Progress) -> Progress:
    stop = StopFlag()
    stream = batches(job)
    bar = tqdm(total=job.total_images, initial=progress.images_seen, unit="img", unit_scale=True,
               disable=not job.env.is_main, dynamic_ncols=True)
    window = {"loss": 0.0, "wait": 0.0, "steps": 0, "start": time.perf_counter()}
    try:
        while progress.images_seen < job.total_images:
            before = progress.images_seen
            out = train_step(job, stream, progress)
            if not torch.isfinite(out["grad_norm"]) and progress.bad_in_row >= job.max_bad_steps:
                raise NonFiniteLoss(f"{progress.bad_in_row} steps in a row had a non-finite loss or gradient "
                                    f"(at {progress.images_seen} images); the last good checkpoint is "
                                    f"{checkpoint.latest(job.run_dir) or 'none'}")
            window["loss"] += float(out["loss"]) if torch.isfinite(out["loss"]) else 0.0
            window["wait"] += out["wait"]
            window["steps"] += 1
            bar.update(job.global_batch)
            stopping = any_rank(stop.raised, job.device)
            if progress.steps % job.log_every == 0 or stopping or progress.images_seen >= job.total_images:
                log(job, progress, out, window, bar)
            if crossed(before, progress.images_seen, job.eval_every) and job.evaluate is not None:
                job.loggers.log({"images_seen": progress.images_seen, **job.evaluate()})
            finished = progress.images_seen >= job.total_images
            if crossed(before, progress.images_seen, job.checkpoint_every) or stopping or finished:
                save(job, progress)
            if stopping:
                print(f"rank {job.env.rank}: stop signal; checkpoint at {progress.images_seen} images",
                      file=sys.stderr, flush=True)
                break
    finally:
        stream.close()  # stops the loader's worker processes
    bar.close()
    return progress


def any_rank(flag: bool, device: torch.device) -> bool:
    if not torch.distributed.is_initialized():
        return flag
    return dist.all_reduce_sum([float(flag)], device)[0] > 0


def log(job: Job, progress: Progress, out: dict, window: dict, bar) -> None:
    elapsed = time.perf_counter() - window["start"]
    loss, wait, bad_samples = dist.all_reduce_sum(
        [window["loss"], window["wait"], float(sum(job.loader.bad_samples.values()))], job.device)
    steps = max(1, window["steps"])
    metrics = {
        "images_seen": progress.images_seen, "epoch": getattr(job.loader, "epoch", 0),
        "loss": loss / steps / job.env.world_size, "lr": out["lr"],
        "img_per_s": steps * job.global_batch / max(elapsed, 1e-9),
        "data_wait": wait / job.env.world_size / max(elapsed, 1e-9),
        "bad_steps": progress.bad_steps, "bad_samples": int(bad_samples),
    }
    if job.device.type == "cuda":
        metrics["max_mem_gb"] = torch.cuda.max_memory_allocated(job.device) / 2**30
    job.loggers.log(metrics)
    bar.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{metrics['lr']:.4g}", refresh=False)
    window.update(loss=0.0, wait=0.0, steps=0, start=time.perf_counter())
