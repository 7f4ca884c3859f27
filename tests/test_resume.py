"""pretrain/resume.py: a run folder with another config is refused in one line; a resume drops
the metric rows logged past its checkpoint."""
from __future__ import annotations

import json
import subprocess

import pytest
from helpers import PRETRAIN_TINY as TINY
from helpers import REPO, child_env, cli
from helpers import pretrain_config as config

from data_tools.common.config import to_dict
from pretrain import checkpoint
from pretrain.train import run


@pytest.mark.timeout(540)
@pytest.mark.slow
def test_a_run_dir_with_another_config_is_refused_in_one_line(shard_dir, tmp_path):
    run_dir = tmp_path / "run"
    common = [f"data.train={shard_dir}", f"run_dir={run_dir}", *TINY, "checkpoint.every_images=32"]
    first = subprocess.run(cli("pretrain", *common, "train.total_images=64"), cwd=REPO, env=child_env(),
                           capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr[-2000:]
    rows_before = (run_dir / "metrics.jsonl").read_text()
    again = subprocess.run(cli("pretrain", *common, "train.total_images=64", "log.every_steps=5"), cwd=REPO,
                           env=child_env(), capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "finished run" in again.stderr
    assert (run_dir / "metrics.jsonl").read_text() == rows_before  # nothing redone, no duplicate rows
    changed = subprocess.run(cli("pretrain", *common, "train.total_images=128", "optim.lr_per_256=0.2"),
                             cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=120)
    assert changed.returncode == 2
    line = changed.stderr.strip()
    assert "\n" not in line and "optim.lr_per_256: 0.1 -> 0.2" in line and "train.total_images: 64 -> 128" in line
    assert "resume_with_changes=true" in line
    (tmp_path / "file").write_text("x")
    as_file = subprocess.run(cli("pretrain", f"data.train={shard_dir}", f"run_dir={tmp_path / 'file'}", *TINY),
                             cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=120)
    assert as_file.returncode == 2 and "is a file" in as_file.stderr and "Traceback" not in as_file.stderr


@pytest.mark.slow
def test_resume_drops_metric_rows_past_the_checkpoint(shard_dir, tmp_path):
    cfg = config(shard_dir, tmp_path / "run", "train.total_images=128", "checkpoint.every_images=64")
    run(cfg, to_dict(cfg))
    for newer in checkpoint.list_checkpoints(tmp_path / "run")[1:]:
        newer.unlink()  # as if killed after logging past the checkpoint at 64 images
    run(cfg, to_dict(cfg))
    seen = [json.loads(line)["images_seen"] for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert seen == sorted(seen) and len(seen) == len(set(seen)), seen
