"""`wsl pretrain`: config → distributed environment → model, data, optimiser → loop → export."""
from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import torch
import yaml
from torch.nn.parallel import DistributedDataParallel

from data_tools import shards
from data_tools.loaders import make_loader
from data_tools.loaders.bottleneck import measure
from pretrain import checkpoint, dist, engine
from pretrain.config import PretrainConfig
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
    gpu = device.type == "cuda"
    if cfg.train.sync_bn and env.world_size > 1:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(device, memory_format=torch.channels_last if gpu and cfg.train.channels_last else torch.preserve_format)
    wrapped = model
    if env.world_size > 1:
        wrapped = DistributedDataParallel(model, device_ids=[device.index] if gpu else None,
                                          gradient_as_bucket_view=True)
    if cfg.train.compile:
        wrapped = torch.compile(wrapped)
    return wrapped, model


def build_job(cfg: PretrainConfig, config_dict: dict, env: dist.DistEnv, device: torch.device,
              model: torch.nn.Module, manifest: dict, trunk_lr_mult: float = 1.0) -> engine.Job:
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
        loggers=make_loggers(run_dir, env.is_main, config_dict, cfg.log.wandb, cfg.log.project, cfg.log.name),
        evaluate=evaluate, eval_every=cfg.eval.every_images)


def run(cfg: PretrainConfig, config_dict: dict, init_model=None, trunk_lr_mult: float = 1.0) -> engine.Progress:
    """Train per `cfg`; `init_model(num_classes)` lets fine-tuning supply its own model, and
    `trunk_lr_mult` gives all but its classifier a smaller LR."""
    env = dist.read_env()
    device = dist.pick_device(cfg.device, env)
    dist.init(env, device, cfg.dist_timeout_s)
    try:
        torch.manual_seed(cfg.seed)
        manifest = shards.read_manifest(cfg.data.train)
        run_dir = Path(cfg.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        if env.is_main:  # what ran, beside what it produced
            (run_dir / "config.yaml").write_text(yaml.safe_dump(config_dict, sort_keys=False))
        num_classes = manifest["num_classes"]
        model = init_model(num_classes) if init_model else build_model(
            cfg.model.name, num_classes, zero_init_residual=cfg.model.zero_init_residual)
        job = build_job(cfg, config_dict, env, device, model, manifest, trunk_lr_mult)
        progress = engine.Progress()
        latest = checkpoint.latest(run_dir)
        if latest is not None:
            engine.restore(job, progress, checkpoint.load(latest))
            say(env, f"resumed from {latest.name} ({progress.images_seen} images seen)")
        else:
            if env.is_main and cfg.log.wandb != "off" and cfg.log.sample_images > 0:
                job.loggers.log_images(*sample_images(cfg.data.train, cfg.log.sample_images))
            say(env, f"{cfg.model.name}: {sum(p.numel() for p in model.parameters()):,} parameters, "
                     f"{num_classes} labels, global batch {job.global_batch}, {env.world_size} rank(s) on {device.type}")
        if cfg.train.bottleneck_seconds > 0:
            report_bottleneck(job, cfg.train.bottleneck_seconds)
        progress = engine.train(job, progress)
        if progress.images_seen >= job.total_images:
            if job.evaluate is not None:
                job.loggers.log({"images_seen": progress.images_seen, **job.evaluate()})
            if env.is_main:
                export(job.module.state_dict(), cfg.model.name, config_dict, run_dir / "backbone.pt")
                say(env, f"done: {progress.images_seen} images; backbone at {run_dir / 'backbone.pt'}")
        job.loggers.close()
        return progress
    finally:
        dist.close()


def report_bottleneck(job: engine.Job, seconds: float) -> None:
    """Loader alone vs model step alone. The bare model takes the probe steps, so no rank
    waits in a collective for another; weights, BN statistics and RNGs are put back after,
    so the run trains exactly as without the probe."""
    weights, rng = copy.deepcopy(job.module.state_dict()), checkpoint.rng_state()

    def step(images, targets):
        with torch.autocast(job.device.type, torch.bfloat16, enabled=job.bf16):
            loss = job.loss_fn(job.module(images), targets)
        loss.backward()
        job.module.zero_grad(set_to_none=True)

    try:
        say(job.env, str(measure(job.loader, step, seconds)))
    finally:
        job.module.load_state_dict(weights)
        checkpoint.set_rng_state(rng)


def export(state_dict: dict, name: str, config: dict, path: Path) -> Path:
    """The backbone for fine-tuning: every weight but the classifier."""
    backbone = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"model": name, "state_dict": backbone, "config": config}, tmp)
    os.replace(tmp, path)
    return path


def export_run(run_dir: str, out: str | None) -> Path:
    """`wsl pretrain export RUN_DIR`: the newest checkpoint's backbone."""
    latest = checkpoint.latest(Path(run_dir))
    if latest is None:
        raise FileNotFoundError(f"{run_dir} holds no checkpoint-*.pt")
    state = checkpoint.load(latest)
    path = Path(out) if out else Path(run_dir) / "backbone.pt"
    return export(state["model"], state["config"]["model"]["name"], state["config"], path)


def say(env: dist.DistEnv, text: str) -> None:
    if env.is_main:
        print(text, file=sys.stderr, flush=True)
