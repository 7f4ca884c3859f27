"""Resuming a run directory: its newest checkpoint, and refusing one that holds a run of
another config (pretraining's, and through finetune.run_dir fine-tuning's and probes')."""
from __future__ import annotations

from pathlib import Path

from data_tools.common import dist
from data_tools.common.config import upgrade
from pretrain import checkpoint

# Keys a resumed run may change freely: they alter how a run is watched, not what it computes.
FREE_KEYS = ("log.", "data.loader.workers", "dist_timeout_s", "train.bottleneck_seconds", "resume_with_changes")


def resume_state(run_dir: Path, env: dist.DistEnv, cls: type, config: dict, allow_changes: bool) -> dict | None:
    """The newest checkpoint's state (rank 0 picks it for all ranks), or None for a fresh
    run. A run directory that holds a run of another config is refused, naming the keys;
    the recorded config is read as `cls` reads it now (keys renamed since: config.upgrade)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise NotADirectoryError(f"run_dir {run_dir} is a file, not a directory")
    latest = dist.from_main(checkpoint.latest(run_dir) if env.is_main else None)
    if latest is None:
        return None
    state = checkpoint.load(latest)
    if not allow_changes:
        refuse_changes(run_dir, upgrade(cls, state["config"]), config, FREE_KEYS)
    return state


def refuse_changes(run_dir: Path, recorded: dict, config: dict, free: tuple[str, ...]) -> None:
    """A run directory is not reused with another config, but for keys starting with `free`."""
    changed = [f"{k}: {a!r} -> {b!r}" for k, a, b in diff(recorded, config) if not k.startswith(free)]
    if changed:
        raise ValueError(f"run_dir {run_dir} holds a run with another config ({'; '.join(changed[:6])}"
                         f"{'; ...' if len(changed) > 6 else ''}): use a new run_dir to start afresh, or "
                         "add resume_with_changes=true to continue this run with the new values")


def diff(old: dict, new: dict, prefix: str = "") -> list[tuple[str, object, object]]:
    found = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found += diff(a, b, f"{prefix}{key}.")
        elif a != b:
            found.append((prefix + key, a, b))
    return found
