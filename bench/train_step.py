"""Trainer overhead: our engine's img/s against a bare torch loop, same model, batch and data.

Both loops take their batches from the same tensors in memory, so the ratio isolates what
the engine adds (LR schedule, grad-norm check, logging, progress bar, signal checks).
Goal: overhead <= 3 %. On a GPU it also reports bf16 + channels_last img/s and MFU.

    python bench/train_step.py                                   # CPU: tiny ResNeXt
    python bench/train_step.py --model resnext101_32x8d --batch 128 --device cuda --steps 60
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_tools.common.dist import DistEnv  # noqa: E402
from pretrain import engine  # noqa: E402
from pretrain.loggers import Loggers  # noqa: E402
from pretrain.losses import make_loss  # noqa: E402
from pretrain.models import build_model  # noqa: E402
from pretrain.optim import make_optimizer  # noqa: E402

PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12}


class MemoryBatches:
    """The same few batches over and over: the data path costs nothing in either loop."""

    def __init__(self, images, targets, steps):
        self.images, self.targets, self.steps = images, targets, steps
        self.bad_samples, self.catalog_bad, self.decode_failures = Counter(), 0, 0

    def __iter__(self):
        for _ in range(self.steps):
            yield self.images, self.targets

    def state_dict(self):
        return {}


def setup(args, device):
    torch.manual_seed(0)
    model = build_model(args.model, args.classes).to(device)
    fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    model = model.to(memory_format=fmt)
    images = torch.randn(args.batch, 3, args.size, args.size, device=device).contiguous(memory_format=fmt)
    targets = torch.zeros(args.batch, args.classes, device=device)
    targets[torch.arange(args.batch), torch.randint(0, args.classes, (args.batch,))] = 1
    return model, images, targets


def bare_loop(args, device) -> float:
    model, images, targets = setup(args, device)
    opt = make_optimizer(model, 0.1)
    loss_fn = make_loss("softmax")
    bf16 = device.type == "cuda"

    def step():
        with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
            loss = loss_fn(model(images), targets)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    for _ in range(args.warmup):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync(device)
    return args.steps * args.batch / (time.perf_counter() - start)


def engine_loop(args, device) -> float:
    model, images, targets = setup(args, device)
    opt = make_optimizer(model, 0.1)
    with tempfile.TemporaryDirectory() as run_dir:
        def job(steps):
            return engine.Job(
                model=model, module=model, optimizer=opt, loader=MemoryBatches(images, targets, steps),
                loss_fn=make_loss("softmax"), lr_at=lambda seen: 0.1, env=DistEnv(), device=device,
                run_dir=Path(run_dir), total_images=steps * args.batch, global_batch=args.batch, accum_steps=1,
                bf16=device.type == "cuda", max_bad_steps=5, log_every=20, checkpoint_every=0, keep=1,
                config={}, loggers=Loggers([]))
        engine.train(job(args.warmup), engine.Progress())
        sync(device)
        start = time.perf_counter()
        engine.train(job(args.steps), engine.Progress())
        sync(device)
        return args.steps * args.batch / (time.perf_counter() - start)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def flops_per_image(args) -> float:
    """Forward FLOPs from a meta-device trace x 3 (forward + backward)."""
    from torch.utils.flop_counter import FlopCounterMode
    model = build_model(args.model, args.classes)
    with FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 3, args.size, args.size))
    return 3 * counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnext_tiny")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    bare, ours = [], []
    for _ in range(args.repeats):  # interleaved, so drift in machine speed hits both alike
        bare.append(bare_loop(args, device))
        ours.append(engine_loop(args, device))
    b, o = max(bare), max(ours)
    print(f"model {args.model}, batch {args.batch}, {args.size}px, {device.type}")
    print(f"bare loop: {b:.1f} img/s, engine: {o:.1f} img/s, ratio: {o / b:.3f} (overhead {100 * (1 - o / b):.1f} %)")
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
        if peak:
            print(f"MFU: {o * flops_per_image(args) / peak:.1%} of {name} bf16 dense peak")


if __name__ == "__main__":
    main()
