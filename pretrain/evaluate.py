"""Held-out evaluation: mAP and precision@1/5 over tags, or top-1/top-5 for single labels.

Every evaluation scores the same images: the first `eval.max_images` of the held-out
shards, read from the start each time, each image once (the loader's wrap-around fill,
which evens out the ranks' batches, is dropped by catalog row). Each rank scores its
slice; the scores go to rank 0 only, with tags as (image, tag) pairs rather than dense
N×K targets, and rank 0 computes mAP a block of tags at a time, on its GPU when there is
one. So at the paper's 50k images × 17k tags, one rank holds the scores (3.4 GB) and a
bounded workspace, and the others hold nothing after sending their slice.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.distributed as tdist

from data_tools.loaders import make_loader
from pretrain.metrics import average_precision, topk_accuracy

WORKSPACE = 1 << 25  # elements in one block of the metric computations (x ~13 in temporaries)


@torch.no_grad()
def score(model: torch.nn.Module, loader, limit: int, bf16: bool, device: torch.device) -> dict:
    """This rank's scores (float32, CPU), targets (tag pairs or labels) and catalog rows,
    for at most `limit` images from the loader's current position."""
    was_training = model.training
    model.eval()
    scores, rows, labels, pairs, seen = [], [], [], [], 0
    try:
        for batch in loader:
            images, targets = batch
            with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
                logits = model(images)
            take = min(len(images), limit - seen)
            scores.append(logits[:take].float().cpu())
            rows.append(np.asarray(batch.rows[:take]))
            if targets.dim() == 2:  # k-hot: keep (image, tag) pairs
                nz = targets[:take].nonzero().cpu()
                pairs.append(torch.stack([nz[:, 0] + seen, nz[:, 1]], 1))
            else:
                labels.append(targets[:take].cpu())
            seen += take
            if seen >= limit:
                break
    finally:
        model.train(was_training)
    out = {"scores": torch.cat(scores) if scores else torch.zeros(0, 0),
           "rows": np.concatenate(rows) if rows else np.zeros(0, np.int64)}
    if pairs or not labels:
        out["pairs"] = torch.cat(pairs) if pairs else torch.zeros(0, 2, dtype=torch.int64)
    else:
        out["labels"] = torch.cat(labels)
    return out


def to_main(part: dict) -> list[dict] | None:
    """Every rank's part on rank 0 (None elsewhere)."""
    if not tdist.is_initialized():
        return [part]
    parts = [None] * tdist.get_world_size() if tdist.get_rank() == 0 else None
    tdist.gather_object(part, parts, dst=0)
    return parts


def join(parts: list[dict]) -> dict:
    """One table of scores with each catalog row once, in rank then stream order."""
    offsets = np.cumsum([0] + [len(p["rows"]) for p in parts])
    rows = np.concatenate([p["rows"] for p in parts])
    _, first = np.unique(rows, return_index=True)
    keep = np.sort(first)
    scores = torch.cat([p["scores"] for p in parts])[torch.from_numpy(keep)]
    if "labels" in parts[0]:
        return {"scores": scores, "labels": torch.cat([p["labels"] for p in parts])[torch.from_numpy(keep)]}
    new_index = np.full(len(rows), -1, dtype=np.int64)
    new_index[keep] = np.arange(len(keep))
    pairs = torch.cat([p["pairs"] + torch.tensor([int(o), 0]) for p, o in zip(parts, offsets)])
    pairs[:, 0] = torch.from_numpy(new_index)[pairs[:, 0]]
    return {"scores": scores, "pairs": pairs[pairs[:, 0] >= 0]}


def dense(pairs: torch.Tensor, rows: slice, cols: slice, shape: tuple[int, int], device) -> torch.Tensor:
    """The k-hot block targets[rows, cols] from (image, tag) pairs."""
    r, c = pairs[:, 0], pairs[:, 1]
    inside = (r >= rows.start) & (r < rows.stop) & (c >= cols.start) & (c < cols.stop)
    block = torch.zeros(shape, dtype=torch.bool, device=device)
    block[(r[inside] - rows.start).to(device), (c[inside] - cols.start).to(device)] = True
    return block


def tag_metrics(scores: torch.Tensor, pairs: torch.Tensor, device: torch.device) -> dict:
    """mAP over tags with a positive, and precision@1/@5, in blocks of WORKSPACE elements."""
    n, k = scores.shape
    width = max(1, WORKSPACE // max(n, 1))
    aps = []
    for c0 in range(0, k, width):
        cols = slice(c0, min(k, c0 + width))
        block = scores[:, cols].to(device)
        aps.append(average_precision(block, dense(pairs, slice(0, n), cols, block.shape, device)).cpu())
    ap = torch.cat(aps)
    if ap.isnan().all():
        raise ValueError("the held-out set has no tag with a positive example")
    found = {"mAP": ap[~ap.isnan()].mean().item()}
    height = max(1, WORKSPACE // max(k, 1))
    hits = {1: 0.0, 5: 0.0}
    for r0 in range(0, n, height):
        rows = slice(r0, min(n, r0 + height))
        block = scores[rows].to(device)
        truth = dense(pairs, rows, slice(0, k), block.shape, device)
        top = block.topk(min(5, k), dim=1).indices
        got = truth.gather(1, top).float()
        hits[1] += got[:, :1].mean(1).sum().item()
        hits[5] += got[:, :5].mean(1).sum().item()
    found["precision@1"], found["precision@5"] = hits[1] / n, hits[5] / n
    return found


def metrics(table: dict, device: torch.device) -> dict:
    if "labels" in table:
        top = topk_accuracy(table["scores"], table["labels"], ks=(1, min(5, table["scores"].shape[1])))
        return {"top1": top[1], "top5": top[min(5, table["scores"].shape[1])], "images": len(table["labels"])}
    return {**tag_metrics(table["scores"], table["pairs"], device), "images": len(table["scores"])}


def collect(model: torch.nn.Module, loader, device: torch.device, bf16: bool, limit: int | None = None):
    """The whole held-out table (scores and targets, every image once) on rank 0; None on
    the other ranks. Reads the loader from its current position."""
    world = tdist.get_world_size() if tdist.is_initialized() else 1
    per_rank = -(-limit // world) if limit else len(loader) * loader.cfg.batch_size
    parts = to_main(score(model, loader, per_rank, bf16, device))
    return join(parts) if parts is not None else None


def loader_config(cfg):
    """The loader settings of evaluation: no resampling, and the eval resolution when one
    is set (`eval.image_size`, with the resize scaled alike unless `eval.resize_size`)."""
    base = cfg.data.loader
    size = cfg.eval.image_size or base.image_size
    resize = cfg.eval.resize_size or round(base.resize_size * size / base.image_size)
    return dataclasses.replace(base, sqrt_resample=False, image_size=size, resize_size=resize)


def make_evaluator(cfg, model: torch.nn.Module, env, device: torch.device):
    """A no-argument callable returning the metrics on cfg.data.val, prefixed 'val/'
    (on rank 0; the other ranks return an empty dict, since only rank 0 logs)."""
    loader = make_loader(loader_config(cfg), cfg.data.val, env.rank, env.world_size, device, "eval")
    start = loader.state_dict()
    bf16 = cfg.train.bf16 and device.type == "cuda"

    def evaluate() -> dict:
        loader.load_state_dict(start)  # the same images every time
        table = collect(model, loader, device, bf16, cfg.eval.max_images)
        if table is None:
            return {}
        return {f"val/{k}": v for k, v in metrics(table, device).items()}

    return evaluate
