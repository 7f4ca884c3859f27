"""The run-directory check that full fine-tuning and the linear probe both make."""
from __future__ import annotations

from pathlib import Path

import yaml

from finetune.config import FinetuneConfig
from pretrain import resume

# Linear probes of one backbone on one data set share their cached features: a run directory
# may be re-run with other probe settings (its probe.pt and results are then replaced).
PROBE_FREE_KEYS = (*resume.FREE_KEYS, "probe.")


def check_run_dir(cfg: FinetuneConfig, config_dict: dict) -> None:
    """A run directory holding a fine-tuning or probe of another backbone, data or mode is
    refused, as pretraining's is: its results would be replaced and its W&B run mixed."""
    recorded = Path(cfg.run_dir) / "config.yaml"
    if recorded.is_file() and not cfg.resume_with_changes:
        resume.refuse_changes(Path(cfg.run_dir), yaml.safe_load(recorded.read_text()), config_dict, PROBE_FREE_KEYS)
