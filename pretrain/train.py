"""`wsl pretrain`: config → distributed environment → model, data, optimiser → loop → export."""
from __future__ import annotations

import copy
from pathlib import Path

import torch
import yaml
from torch.nn.parallel import DistributedDataParallel

from data_tools.common import dist, threads
from data_tools.common.log import say
from data_tools.format import shards
from data_tools.loaders import make_loader
from data_tools.loaders.bottleneck import measure
from pretrain import backbone, checkpoint, engine, resume
from pretrain.config import PretrainConfig
from pretrain.curves import validation_summary
from pretrain.evaluate import make_evaluator
from pretrain.loggers import make_loggers, sample_images
from pretrain.losses import make_loss
from pretrain.models import build_model
from pretrain.optim import make_optimizer


def loss_kind(requested: str, label_type: str) -> str:
    if requested != "auto":
        return requested
    return "softmax" if label_type == "multi" else "ce"


def prepare_model(model: torch.nn.Module, cfg, env: dist.DistEnv, device: torch.device):
    """Device placement, memory format, SyncBN, DDP and compile; returns (wrapped, bare)."""
    gpu, distributed = device.type == "cuda", torch.distributed.is_initialized()
    if cfg.train.sync_bn and distributed:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    # The loaders hand over channels_last images on every device; weights in the same
    # layout keep the gradients in it too, as DDP's buckets expect.
    model = model.to(device, memory_format=torch.channels_last if cfg.train.channels_last else torch.preserve_format)
    wrapped = model
    if distributed:
        wrapped = DistributedDataParallel(model, device_ids=[device.index] if gpu else None,
                                          gradient_as_bucket_view=True)
    if cfg.train.compile:
        wrapped = torch.compile(wrapped)
    return wrapped, model


def build_job(cfg: PretrainConfig, config_dict: dict, env: dist.DistEnv, device: torch.device,
              model: torch.nn.Module, manifest: dict, resume_at: int = 0, trunk_lr_mult: float = 1.0) -> engine.Job:
    run_dir = Path(cfg.run_dir)
    loader = make_loader(cfg.data.loader, cfg.data.train, env.rank, env.world_size, device, "train")
    wrapped, bare = prepare_model(model, cfg, env, device)
    optimizer = make_optimizer(bare, cfg.optim.lr_per_256, cfg.optim.momentum, cfg.optim.weight_decay,
                               cfg.optim.nesterov, cfg.optim.skip_bn_bias, trunk_lr_mult)
    global_batch = cfg.data.loader.batch_size * env.world_size * cfg.train.accum_steps
    total = cfg.train.total_images
    evaluate = make_evaluator(cfg, bare, env, device) if cfg.data.val else None
    return engine.Job(
        model=wrapped, module=bare, optimizer=optimizer, loader=loader,
        loss_fn=make_loss(loss_kind(cfg.train.loss, manifest["label_type"])),
        lr_at=lambda seen: cfg.optim.lr(seen, global_batch, total),
        env=env, device=device, run_dir=run_dir, total_images=total, global_batch=global_batch,
        accum_steps=cfg.train.accum_steps, bf16=cfg.train.bf16 and device.type == "cuda",
        max_bad_steps=cfg.train.max_bad_steps, log_every=cfg.log.every_steps,
        checkpoint_every=cfg.checkpoint.every_images, keep=cfg.checkpoint.keep, config=config_dict,
        loggers=make_loggers(run_dir, env.is_main, config_dict, cfg.log.wandb, cfg.log.project, cfg.log.name,
                             resume_at),
        evaluate=evaluate, eval_every=cfg.eval.every_images, stop_check_steps=cfg.train.stop_check_steps)


def run(cfg: PretrainConfig, config_dict: dict, init_model=None, trunk_lr_mult: float = 1.0,
        on_start=None) -> engine.Progress:
    """Train per `cfg`; `init_model(num_classes)` lets fine-tuning supply its own model,
    `trunk_lr_mult` gives all but its classifier a smaller LR, and `on_start()` runs on
    every rank once the process group is formed (fine-tuning's leak check)."""
    env = dist.read_env()
    budget = threads.limit(cfg.threads, cfg.data.loader.worker_count())
    device = dist.pick_device(cfg.device, env)
    dist.init(env, device, cfg.dist_timeout_s)
    try:
        if on_start:
            on_start()
        torch.manual_seed(cfg.seed)
        manifest = shards.read_manifest(cfg.data.train)
        run_dir = Path(cfg.run_dir)
        state = resume.resume_state(run_dir, env, type(cfg), config_dict, cfg.resume_with_changes)
        progress = engine.Progress(**state["progress"]) if state else engine.Progress()
        if progress.images_seen >= cfg.train.total_images:
            if env.is_main and not (run_dir / "backbone.pt").is_file():  # stopped between the two
                backbone.export(state["model"], cfg.model.name, config_dict, run_dir / "backbone.pt")
            say(f"{run_dir} is a finished run ({progress.images_seen} images); nothing to do "
                     "(a new run_dir starts afresh)", env)
            return progress
        if env.is_main:  # what ran, beside what it produced
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "config.yaml").write_text(yaml.safe_dump(config_dict, sort_keys=False))
        num_classes = manifest["num_classes"]
        model = init_model(num_classes) if init_model else build_model(
            cfg.model.name, num_classes, zero_init_residual=cfg.model.zero_init_residual)
        job = build_job(cfg, config_dict, env, device, model, manifest, progress.images_seen, trunk_lr_mult)
        say(budget, env)  # the run's first line, after what refuses a run in one line (run_dir, W&B, loader)
        if state:
            engine.restore(job, progress, state)
            say(f"resumed from {progress.images_seen} images", env)
        else:
            if env.is_main and cfg.log.wandb != "off" and cfg.log.sample_images > 0:
                job.loggers.log_images(*sample_images(cfg.data.train, cfg.log.sample_images))
            say(f"{cfg.model.name}: {sum(p.numel() for p in model.parameters()):,} parameters, "
                     f"{num_classes} labels, global batch {job.global_batch}, {env.world_size} rank(s) on {device.type}", env)
            if cfg.train.bottleneck_seconds > 0:
                report_bottleneck(job, cfg.train.bottleneck_seconds)
        try:
            progress = engine.train(job, progress)
            engine.evaluate(job, progress)
        finally:
            job.loggers.close()
        if env.is_main:
            backbone.export(job.module.state_dict(), cfg.model.name, config_dict, run_dir / "backbone.pt")
            final = validation_summary(run_dir / "metrics.jsonl")
            say(f"done: {progress.images_seen} images; {final + '; ' if final else ''}"
                     f"backbone at {run_dir / 'backbone.pt'}", env)
        return progress
    finally:
        dist.close()


def report_bottleneck(job: engine.Job, seconds: float) -> None:
    """Loader alone vs model step alone, once, when a run starts. The bare model takes the
    probe steps, so no rank waits in a collective for another; weights, BN statistics and
    RNGs are put back after, so the run trains exactly as without the probe."""
    weights, rng = copy.deepcopy(job.module.state_dict()), checkpoint.rng_state(job.device)

    def step(images, targets):
        with torch.autocast(job.device.type, torch.bfloat16, enabled=job.bf16):
            loss = job.loss_fn(job.module(images), targets)
        loss.backward()
        job.module.zero_grad(set_to_none=True)

    try:
        say(str(measure(job.loader, step, seconds)), job.env)
    finally:
        job.module.load_state_dict(weights)
        checkpoint.set_rng_state(rng, job.device)


def export_run(run_dir: str, out: str | None) -> Path:
    """`wsl pretrain export RUN_DIR`: the newest checkpoint's backbone."""
    latest = checkpoint.latest(Path(run_dir))
    if latest is None:
        raise FileNotFoundError(f"{run_dir} holds no checkpoint-*.pt")
    state = checkpoint.load(latest)
    path = Path(out) if out else Path(run_dir) / "backbone.pt"
    return backbone.export(state["model"], state["config"]["model"]["name"], state["config"], path)


