"""The training loop, shared by pretraining and fine-tuning. Read it top to bottom.

One optimiser step = `accum_steps` micro-batches per rank; DDP synchronises gradients on
the last one only. Everything is scheduled in images seen. A step whose gradient is not
finite is skipped on every rank alike (the norm is taken after DDP's all-reduce), and the
BatchNorm statistics its forward pass moved are put back. A stop signal (Ctrl-C, SIGTERM,
SLURM's SIGUSR1/SIGUSR2) ends the run at a step boundary with a checkpoint, all ranks
together, and `train` raises `Interrupted`.

The host waits for the device once per step, for the skip decision; the loss is read only
when a log line is due, and the ranks agree on a stop every `stop_check_steps` steps.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from data_tools.common import dist
from pretrain import checkpoint
from pretrain.optim import set_lr
from pretrain.stop import Interrupted, NonFiniteLoss, requested, stop_signals


@dataclass
class Progress:
    images_seen: int = 0
    steps: int = 0
    bad_steps: int = 0          # all non-finite steps skipped so far
    bad_in_row: int = 0
    evaluated_at: int = -1      # images seen at the last evaluation


@dataclass
class Job:
    """What the loop needs; built by pretrain.train or finetune.train."""
    model: torch.nn.Module             # DDP-wrapped when distributed
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
    stop_check_steps: int = 10


# --- stopping on a signal ------------------------------------------------------------------

def agreed_stop(job: Job, progress: Progress) -> int:
    """The signal every rank stops on (0: go on). Ranks compare notes every few steps, all
    at the same step, so a signal that reached one rank only stops them all together."""
    if not torch.distributed.is_initialized():
        return requested()
    if progress.steps % job.stop_check_steps:
        return 0
    return int(dist.all_reduce_max([float(requested())], job.device)[0])


# --- one step -----------------------------------------------------------------------------

def batches(job: Job):
    """Endless batches: the loader moves to the next epoch (reshuffled) when one ends, and
    its state, restored from a checkpoint, says where in which epoch to go on."""
    while True:
        yield from job.loader


def grad_norm(params: list[torch.Tensor]) -> torch.Tensor:
    """The L2 norm of all gradients together, left on the device."""
    if not params:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm([p.grad for p in params])))


def train_step(job: Job, stream, progress: Progress) -> dict:
    lr = job.lr_at(progress.images_seen)
    set_lr(job.optimizer, lr)
    # A non-finite step is undone, BatchNorm statistics included: its forward pass has
    # already moved them, and DDP would spread rank 0's to every rank at the next step.
    buffers = [b.detach().clone() for b in job.module.buffers()]
    loss_sum, wait = torch.zeros((), device=job.device), 0.0
    for micro in range(job.accum_steps):
        t0 = time.perf_counter()
        images, targets = next(stream)
        wait += time.perf_counter() - t0
        last = micro == job.accum_steps - 1
        sync = contextlib.nullcontext() if last or not hasattr(job.model, "no_sync") else job.model.no_sync()
        with sync:
            with torch.autocast(job.device.type, torch.bfloat16, enabled=job.bf16):
                loss = job.loss_fn(job.model(images), targets) / job.accum_steps
            loss.backward()
        loss_sum += loss.detach()
    norm = grad_norm([p for p in job.module.parameters() if p.grad is not None])
    if torch.isfinite(norm).item():  # the step's one wait for the device
        job.optimizer.step()
        progress.bad_in_row = 0
    else:
        torch._foreach_copy_(list(job.module.buffers()), buffers)
        progress.bad_steps += 1
        progress.bad_in_row += 1
    job.optimizer.zero_grad(set_to_none=True)
    progress.images_seen += job.global_batch
    progress.steps += 1
    return {"loss": loss_sum, "lr": lr, "grad_norm": norm, "wait": wait}


# --- checkpoints --------------------------------------------------------------------------

def save(job: Job, progress: Progress) -> None:
    if job.env.is_main:
        state = {"model": job.module.state_dict(), "optimizer": job.optimizer.state_dict(),
                 "loader": job.loader.state_dict(), "progress": asdict(progress),
                 "rng": checkpoint.rng_state(job.device), "config": job.config}
        checkpoint.save(state, job.run_dir, progress.images_seen, job.keep)
    dist.barrier()


def restore(job: Job, progress: Progress, state: dict) -> None:
    job.module.load_state_dict(state["model"])
    job.optimizer.load_state_dict(state["optimizer"])
    job.loader.load_state_dict(state["loader"])
    for key, value in state["progress"].items():
        setattr(progress, key, value)
    checkpoint.set_rng_state(state["rng"], job.device)


def crossed(before: int, after: int, every: int) -> bool:
    return every > 0 and before // every != after // every


# --- the loop -----------------------------------------------------------------------------

def train(job: Job, progress: Progress) -> Progress:
    stream = batches(job)
    bar = tqdm(total=job.total_images, initial=progress.images_seen, unit="img", unit_scale=True,
               disable=not job.env.is_main, dynamic_ncols=True)
    window = Window(job.device)
    try:
        with stop_signals():
            while progress.images_seen < job.total_images:
                before = progress.images_seen
                out = train_step(job, stream, progress)
                if progress.bad_in_row >= job.max_bad_steps:
                    raise NonFiniteLoss(progress.bad_in_row, progress.images_seen, checkpoint.latest(job.run_dir))
                window.add(out)
                bar.update(job.global_batch)
                signum = agreed_stop(job, progress)
                finished = progress.images_seen >= job.total_images
                if progress.steps % job.log_every == 0 or signum or finished:
                    log(job, progress, out, window, bar)
                if crossed(before, progress.images_seen, job.eval_every):
                    evaluate(job, progress)
                if crossed(before, progress.images_seen, job.checkpoint_every) or signum or finished:
                    save(job, progress)
                if signum:
                    raise Interrupted(signum, progress.images_seen)
    finally:
        stream.close()  # stops the loader's worker processes
        bar.close()
    return progress


def evaluate(job: Job, progress: Progress) -> None:
    if job.evaluate is not None and progress.evaluated_at != progress.images_seen:
        job.loggers.log({"images_seen": progress.images_seen, **job.evaluate()})
        progress.evaluated_at = progress.images_seen


class Window:
    """Sums between two log lines, kept on the device so logging costs the only read."""

    def __init__(self, device: torch.device):
        self.loss = torch.zeros((), dtype=torch.float64, device=device)
        self.reset()

    def reset(self) -> None:
        self.loss.zero_()
        self.wait, self.steps, self.start = 0.0, 0, time.perf_counter()

    def add(self, out: dict) -> None:
        loss = out["loss"].double()
        self.loss += torch.where(torch.isfinite(loss), loss, torch.zeros_like(loss))
        self.wait += out["wait"]
        self.steps += 1


def log(job: Job, progress: Progress, out: dict, window: Window, bar) -> None:
    elapsed = time.perf_counter() - window.start
    loss, wait, decode_failures = dist.all_reduce_sum(
        [window.loss.item(), window.wait, float(job.loader.decode_failures)], job.device)
    steps = max(1, window.steps)
    metrics = {
        "images_seen": progress.images_seen, "epoch": getattr(job.loader, "epoch", 0),
        "loss": loss / steps / job.env.world_size, "lr": out["lr"], "grad_norm": out["grad_norm"].item(),
        "img_per_s": steps * job.global_batch / max(elapsed, 1e-9),
        "data_wait": wait / job.env.world_size / max(elapsed, 1e-9),
        "bad_steps": progress.bad_steps,
        # Samples the catalog skipped are the same on every rank; decode failures are each rank's own.
        "bad_samples": int(job.loader.catalog_bad + decode_failures),
    }
    if job.device.type == "cuda":
        metrics["max_mem_gb"] = torch.cuda.max_memory_allocated(job.device) / 2**30
    job.loggers.log(metrics)
    bar.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{metrics['lr']:.4g}", refresh=False)
    window.reset()
