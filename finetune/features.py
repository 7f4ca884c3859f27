"""Frozen-trunk features, extracted once per shard set to a memory-mapped .npy with labels.

A probe then trains any number of heads from the files without touching images again. A
finished extraction is recorded in a small JSON beside the arrays (what shards, which
backbone, which stage and crop); a re-run with the same record reuses the files, and an
interrupted one (no record) starts over.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from data_tools import shards
from data_tools.loaders import LoaderConfig, make_loader


def extract(model: torch.nn.Module, shard_dir: str, loader_cfg: LoaderConfig, device: torch.device,
            stages: int | None, out: Path, identity: dict, bf16: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(features (N, D) float32 memmap, labels (N,) int64) of every sample of `shard_dir`,
    centre-cropped as for evaluation. `identity` names the backbone in the record."""
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"shards": str(shard_dir), "fingerprint": shards.fingerprint(shards.read_manifest(shard_dir)),
              "stages": stages, "image_size": loader_cfg.image_size, "resize_size": loader_cfg.resize_size,
              **identity}
    meta = out.with_suffix(".json")
    feats_path, labels_path = out.with_suffix(".features.npy"), out.with_suffix(".labels.npy")
    if meta.is_file() and json.loads(meta.read_text()) == record:
        return np.load(feats_path, mmap_mode="r"), np.load(labels_path)
    meta.unlink(missing_ok=True)
    cfg = dataclasses.replace(loader_cfg, sqrt_resample=False, drop_last=False)
    loader = make_loader(cfg, shard_dir, 0, 1, device, "eval")
    model = model.to(device).eval()
    feats, labels, row = None, np.empty(loader.num_samples, dtype=np.int64), 0
    with torch.no_grad(), tqdm(total=loader.num_samples, unit="img", desc=f"features {Path(shard_dir).name}") as bar:
        for images, targets in loader:
            with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
                batch = model.forward_features(images, stages).float().cpu().numpy()
            if feats is None:
                feats = np.lib.format.open_memmap(feats_path, mode="w+", dtype=np.float32,
                                                  shape=(loader.num_samples, batch.shape[1]))
            take = min(len(batch), loader.num_samples - row)
            feats[row:row + take] = batch[:take]
            labels[row:row + take] = targets[:take].cpu().numpy()
            row += take
            bar.update(take)
    if row != loader.num_samples:
        raise RuntimeError(f"{shard_dir}: the loader gave {row} of {loader.num_samples} samples")
    feats.flush()
    np.save(labels_path, labels)
    tmp = meta.with_name(meta.name + ".tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, meta)   # the record last: its presence means the arrays are whole
    return np.load(feats_path, mmap_mode="r"), labels
