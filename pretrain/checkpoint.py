"""Atomic checkpoints that resume a run exactly.

A checkpoint is written to a temporary file, flushed to disk, then renamed: a crash at any
moment leaves the previous checkpoint whole. Names carry the images seen, so the newest
is found by listing the run directory; the last `keep` are kept. Loading uses
weights_only, so a checkpoint file cannot run code.
"""
from __future__ import annotations

import argparse
import os
import random
import re
from pathlib import Path

import numpy as np
import torch

from data_tools.common import atomic

PATTERN = re.compile(r"^checkpoint-(\d{15})\.pt$")


def path_for(run_dir: Path, images_seen: int) -> Path:
    return Path(run_dir) / f"checkpoint-{images_seen:015d}.pt"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Finished checkpoints, oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    return sorted(p for p in run_dir.iterdir() if PATTERN.match(p.name))


def latest(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def save(state: dict, run_dir: Path, images_seen: int, keep: int) -> Path:
    path = path_for(run_dir, images_seen)
    with atomic.replacing(path, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return path


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


# Training scripts (timm, MAE, DeiT) save their argparse arguments beside the weights; a
# Namespace only sets attributes, so a weights-only load (no code runs) may accept it.
SAFE_GLOBALS = [argparse.Namespace]


def load_weights(path: str | Path, what: str):
    """A weights file of any trainer, loaded weights-only; one that cannot be is one line
    saying why (`what` names the file's role: "backbone", "descriptor checkpoint")."""
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a file that is not a checkpoint
        text = " ".join(str(err).split())
        refused = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if refused:
            why = (f"holds a {refused[1]} object, which a weights-only load refuses; from a trusted file, save "
                   "its state dict alone: torch.save(torch.load(F, weights_only=False)['state_dict'], 'weights.pt')")
        elif "Unsupported operand" in text:
            why = "is not a torch file (neither torch.save's zip nor a pickle)"
        else:
            why = f"is not a readable torch file: {text[:300]}"
        raise ValueError(f"{what} {path} {why}") from None


def rng_state(device: torch.device | None = None) -> dict:
    """Every RNG a step may draw from, in forms weights_only loading accepts. Of the GPUs,
    only the run's own: a resumed job may see fewer (8 per process under torchrun, one
    per task under srun)."""
    state = {"torch": torch.get_rng_state(), "python": _plain(random.getstate()),
             "numpy": _numpy_state()}
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device | None = None) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_tuple(state["python"]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def _numpy_state() -> list:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)]


def _plain(value):
    return [_plain(v) for v in value] if isinstance(value, tuple) else value


def _tuple(value):
    return tuple(_tuple(v) for v in value) if isinstance(value, list) else value
