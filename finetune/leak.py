"""Leak guard: was the backbone's pretraining data near-duplicate filtered against this
evaluation set? Read from the `dedup` record of the pretraining shards' manifest.json:

    "dedup": {"against": [{"name", "directory", "fingerprint", "num_samples"}, ...],
              "descriptor", "threshold", "removed", ...}

where `fingerprint` is data_tools.format.shards.fingerprint of the evaluation set's manifest.
When no entry names this evaluation set, the numbers it gives may be inflated by test
images seen in pretraining, and we say so loudly at start (never silently).
"""
from __future__ import annotations

import json
from pathlib import Path

from data_tools.common.log import say
from data_tools.format import shards
from pretrain.backbone import Source

FIELD = "dedup.against[].fingerprint"


def check(source: Source, eval_dirs: list[str]) -> list[str]:
    """Warnings (also printed to stderr) for each evaluation set the pretraining data was
    not filtered against; empty when every one is covered."""
    warnings = [w for d in eval_dirs for w in [_check_one(source, d)] if w]
    for text in warnings:
        shout(text)
    return warnings


def shout(text: str) -> None:
    say(f"\n{'!' * 80}\nLEAK WARNING: {text}\n{'!' * 80}\n")


def _check_one(source: Source, eval_dir: str) -> str | None:
    wanted = shards.fingerprint(shards.read_manifest(eval_dir))
    if source.pretrain_config is None:
        return (f"backbone {source.path} carries no record of its pretraining data, so whether it saw "
                f"images of {eval_dir} (or near-duplicates) is unknown")
    train_dir = source.pretrain_config.get("data", {}).get("train")
    manifest_path = Path(train_dir or "") / "manifest.json"
    if not train_dir or not manifest_path.is_file():
        return (f"the pretraining manifest of backbone {source.path} ({manifest_path}) is not readable here, "
                f"so whether it was filtered against {eval_dir} is unknown")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{manifest_path} (the pretraining data of backbone {source.path}) is not valid JSON: "
                         f"{err}") from None
    against = (manifest.get("dedup") or {}).get("against") or []
    if any(entry.get("fingerprint") == wanted for entry in against):
        return None
    return (f"the pretraining data {train_dir} was not near-duplicate filtered against {eval_dir}: no "
            f"'{FIELD}' in {manifest_path} equals its fingerprint {wanted[:12]}...; results on it may be inflated")


def check_checkpoint(config: dict, eval_dir: str) -> list[str]:
    """`check` for `wsl finetune eval`: the backbone named in the fine-tuning run's config."""
    from pretrain import backbone
    path = config.get("backbone")
    if not path or not Path(path).is_file():
        text = (f"the backbone of this checkpoint ({path or 'not recorded'}) is not readable here, so whether "
                f"its pretraining data was filtered against {eval_dir} is unknown")
        shout(text)
        return [text]
    return check(backbone.read(path), [eval_dir])
