"""Frozen-trunk features, extracted once per shard set to a memory-mapped .npy with labels.

A probe then trains any number of heads from the files without touching images again. A
finished extraction is recorded in a small JSON beside the arrays (what shards, which
backbone, which stage and crop); a re-run with the same record reuses the files, and an
interrupted one (no record) starts over. Under torchrun or srun each rank extracts its
share of the samples straight into the shared arrays, at their catalog rows.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from data_tools.common import atomic, dist
from data_tools.common.log import say
from data_tools.format import shards
from data_tools.loaders import LoaderConfig, make_loader


def extract(model: torch.nn.Module, shard_dir: str, loader_cfg: LoaderConfig, device: torch.device,
            stages: int | None, out: Path, identity: dict, bf16: bool = False,
            env: dist.DistEnv = dist.DistEnv(), views: int = 1,
            dtype: str = "float32") -> tuple[np.ndarray, np.ndarray]:
    """(features (views·N, D) memmap of `dtype`, labels (views·N,) int64) of every sample of
    `shard_dir` in catalog order, view after view: one centre crop as for evaluation, or
    `views` > 1 training crops (random-resized, flipped). `identity` names the backbone in
    the record. Every rank of a process group calls it; each returns the whole arrays.

    The centre crops are shared out by sample (a rank's wrap-around fill rewrites the
    values another rank wrote). Training crops are shared out by view, each view drawn by
    a one-rank training loader at epoch = view: the same crops for any number of ranks."""
    record = {"shards": str(shard_dir), "fingerprint": shards.fingerprint(shards.read_manifest(shard_dir)),
              "stages": stages, "image_size": loader_cfg.image_size, "resize_size": loader_cfg.resize_size,
              **identity, **({"views": views, "min_scale": loader_cfg.min_scale, "seed": loader_cfg.seed}
                             if views > 1 else {}), **({"dtype": dtype} if dtype != "float32" else {})}
    meta = out.with_suffix(".json")
    feats_path, labels_path = out.with_suffix(".features.npy"), out.with_suffix(".labels.npy")
    if dist.from_main(meta.is_file() and json.loads(meta.read_text()) == record):
        return decoded(np.load(feats_path, mmap_mode="r"), np.load(labels_path), views, shard_dir)
    if env.is_main:
        out.parent.mkdir(parents=True, exist_ok=True)
        meta.unlink(missing_ok=True)
    cfg = dataclasses.replace(loader_cfg, sqrt_resample=False, drop_last=False)
    if views == 1:
        loader, mine = make_loader(cfg, shard_dir, env.rank, env.world_size, device, "eval"), [0]
    else:
        loader, mine = make_loader(cfg, shard_dir, 0, 1, device, "train"), range(env.rank, views, env.world_size)
    n = loader.num_samples
    model = model.to(device).eval()
    feats, labels = shared_arrays(feats_path, labels_path, views * n, width(model, stages, cfg, device), env,
                                  dtype)
    with torch.no_grad(), tqdm(total=views * n, unit="img", desc=f"features {Path(shard_dir).name}",
                               disable=not env.is_main) as bar:
        for view in mine:
            loader.set_epoch(view)  # a training loader's epoch draws its crops
            for batch in loader:
                images, targets = batch
                with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
                    part = model.forward_features(images, stages).float().cpu().numpy()
                rows = view * n + np.asarray(batch.rows)
                feats[rows] = part
                labels[rows] = targets.cpu().numpy()
                bar.update(len(rows) * (env.world_size if views == 1 else 1))
    feats.flush()
    labels.flush()
    dist.barrier()
    if env.is_main:
        missing = np.asarray(labels).reshape(views, n) < 0
        if (missing != missing[:1]).any():  # an image that does not decode fails in every view
            raise RuntimeError(f"{shard_dir}: the loaders gave {views * n - int(missing.sum())} of {views * n} samples")
        with atomic.replacing(meta) as f:  # the record last: its presence means the arrays are whole
            f.write(json.dumps(record))
    dist.barrier()
    return decoded(np.load(feats_path, mmap_mode="r"), np.load(labels_path), views, shard_dir)


def decoded(feats: np.ndarray, labels: np.ndarray, views: int, shard_dir: str) -> tuple[np.ndarray, np.ndarray]:
    """The arrays without the rows of images that did not decode (label -1; the loader
    skipped and counted them), in every view; unchanged, still memory-mapped, when all did."""
    n = len(labels) // views
    kept = np.flatnonzero(labels[:n] >= 0)
    if len(kept) == n:
        return feats, labels
    say(f"features {shard_dir}: {n - len(kept)} image(s) did not decode and are left out")
    rows = (np.arange(views)[:, None] * n + kept[None, :]).ravel()
    return np.asarray(feats[rows]), labels[rows]


def width(model: torch.nn.Module, stages: int | None, cfg: LoaderConfig, device: torch.device) -> int:
    """The features' width, from one blank image (every rank must know it before any batch)."""
    with torch.no_grad():
        blank = torch.zeros(1, 3, cfg.image_size, cfg.image_size, device=device)
        return int(model.forward_features(blank, stages).shape[1])


def shared_arrays(feats_path: Path, labels_path: Path, n: int, width: int,
                  env: dist.DistEnv, dtype: str = "float32") -> tuple[np.memmap, np.memmap]:
    """(N, width) features of `dtype` and (N,) int64 labels (-1: not written yet), as .npy
    files every rank writes into."""
    if env.is_main:
        np.lib.format.open_memmap(feats_path, mode="w+", dtype=dtype, shape=(n, width)).flush()
        labels = np.lib.format.open_memmap(labels_path, mode="w+", dtype=np.int64, shape=(n,))
        labels[:] = -1
        labels.flush()
    dist.barrier()
    return np.load(feats_path, mmap_mode="r+"), np.load(labels_path, mmap_mode="r+")
