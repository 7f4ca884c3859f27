"""Held-out evaluation: mAP and precision@1/5 over tags, or top-1/top-5 for single labels.

Each rank scores its own slice of the held-out shards (at most eval.max_images in all,
since N×17k scores grow fast); the scores are gathered and the metrics computed once.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.distributed as tdist

from data_tools import shards
from data_tools.loaders import make_loader
from pretrain.metrics import mean_average_precision, precision_at_k, topk_accuracy


@torch.no_grad()
def score(model: torch.nn.Module, loader, limit: int, bf16: bool, device: torch.device):
    was_training = model.training
    model.eval()
    all_scores, all_targets, seen = [], [], 0
    for images, targets in loader:
        with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
            logits = model(images)
        all_scores.append(logits.float().cpu())
        all_targets.append(targets.cpu())
        seen += len(images)
        if seen >= limit:
            break
    model.train(was_training)
    return torch.cat(all_scores)[:limit], torch.cat(all_targets)[:limit]


def gather(tensor: torch.Tensor) -> torch.Tensor:
    if not tdist.is_initialized():
        return tensor
    parts = [None] * tdist.get_world_size()
    tdist.all_gather_object(parts, tensor)
    return torch.cat(parts)


def metrics(scores: torch.Tensor, targets: torch.Tensor, label_type: str) -> dict:
    if label_type == "single":
        top = topk_accuracy(scores, targets, ks=(1, 5))
        return {"top1": top[1], "top5": top[5]}
    return {"mAP": mean_average_precision(scores, targets),
            "precision@1": precision_at_k(scores, targets, 1),
            "precision@5": precision_at_k(scores, targets, 5)}


def make_evaluator(cfg, model: torch.nn.Module, env, device: torch.device):
    """A no-argument callable returning the metrics on cfg.data.val, prefixed 'val/'."""
    manifest = shards.read_manifest(cfg.data.val)
    loader_cfg = dataclasses.replace(cfg.data.loader, sqrt_resample=False)
    loader = make_loader(loader_cfg, cfg.data.val, env.rank, env.world_size, device, "eval")
    per_rank = max(1, cfg.eval.max_images // env.world_size)
    bf16 = cfg.train.bf16 and device.type == "cuda"

    def evaluate() -> dict:
        scores, targets = score(model, loader, per_rank, bf16, device)
        found = metrics(gather(scores), gather(targets), manifest["label_type"])
        return {f"val/{k}": v for k, v in found.items()}

    return evaluate
