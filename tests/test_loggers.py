"""pretrain/loggers.py: W&B offline records (metrics, captioned sample images) and curves.png
with validation named in words."""
from __future__ import annotations

import json
import os

import pytest
from helpers import PRETRAIN_TINY as TINY
from helpers import REPO, child_env, cli, run_as_users_do
from helpers import pretrain_config as config

from data_tools.common.config import to_dict
from pretrain.train import run


@pytest.mark.slow
def test_wandb_offline_run_records_metrics_and_samples(shard_dir, tmp_path):
    cfg = config(shard_dir, tmp_path / "run", "train.total_images=64", "checkpoint.every_images=64",
                 "log.wandb=offline", "log.sample_images=4")
    os.environ.pop("WANDB_API_KEY", None)
    run(cfg, to_dict(cfg))
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    logged = list(runs[0].glob("run-*.wandb"))
    assert len(logged) == 1 and logged[0].stat().st_size > 0
    samples = list((runs[0] / "files" / "media" / "images").glob("samples_*.png"))
    assert len(samples) == 4, "the sample images with their tags were not logged"


@pytest.mark.slow
def test_single_label_set_with_wandb_as_users_have_it(cub, tmp_path):
    """A converted set's samples carry `labels`, no `tags`: the W&B sample captions once
    crashed on them (KeyError: 'tags'), which W&B off hid from every test."""
    users = [a for a in TINY if not a.startswith("log.wandb")]
    proc = run_as_users_do(cli("pretrain", f"data.train={cub['train']}", f"data.val={cub['test']}",
                               f"run_dir={tmp_path / 'run'}", *users, "train.total_images=48",
                               "checkpoint.every_images=48", "log.sample_images=3"),
                           tmp_path, child_env(), cwd=REPO)
    assert "validation top-1" in proc.stderr.strip().splitlines()[-1], "the last line has no final figures"
    (media,) = (tmp_path / "run" / "wandb").glob("offline-run-*/files/media/images")
    assert len(list(media.glob("samples_*.png"))) == 3
    (record,) = (tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb")
    assert b"Black footed Albatross" in record.read_bytes(), "the samples are not captioned with their class"


def test_curves_show_validation_in_words(tmp_path):
    """curves.png had the training metrics alone, titled by their keys (data_wait, no unit)."""
    from pretrain.loggers import plot_curves, validation_summary
    rows = [{"images_seen": n, "loss": 2 / n, "lr": 0.1, "img_per_s": 80.0, "data_wait": 0.2} for n in (8, 16, 24)]
    rows += [{"images_seen": 24, "val/mAP": 0.4, "val/precision@1": 0.5, "val/precision@5": 0.3, "val/images": 9}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    titles = plot_curves(tmp_path / "metrics.jsonl", tmp_path / "curves.png")
    assert titles == ["training loss", "learning rate", "throughput, images/s", "waiting for data, % of the time",
                      "held-out mAP, %", "held-out precision@1, %"]
    assert validation_summary(tmp_path / "metrics.jsonl") == "held-out mAP 40.0 %, held-out precision@1 50.0 %"
