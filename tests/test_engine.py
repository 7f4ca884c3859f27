"""pretrain/engine.py: the training step and its evaluation boundaries (grad norm, a skipped
step, an eval boundary at the end), each reproduced before it was fixed (issue 8)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import PRETRAIN_TINY as TINY
from helpers import REPO, child_env
from helpers import pretrain_config as config

from data_tools.common.config import to_dict
from data_tools.format import resampling, shards
from pretrain import checkpoint
from pretrain.engine import grad_norm
from pretrain.train import run


def test_grad_norm_is_the_l2_total_norm():
    params = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2, 2))]
    params[0].grad = torch.tensor([3.0, 0.0, 0.0])
    params[1].grad = torch.tensor([[0.0, 4.0], [0.0, 0.0]])
    assert grad_norm(params).item() == pytest.approx(5.0)
    params[1].grad[0, 0] = float("inf")
    assert not torch.isfinite(grad_norm(params))


def poisoning_script(tmp_path: Path) -> Path:
    """`wsl pretrain` whose rank 0 gets an image of infinities at its step 2."""
    script = tmp_path / "poisoned.py"
    script.write_text(f"""
import os, sys
sys.path.insert(0, {str(REPO)!r})
import torch
from pretrain import train
real = train.make_loader
def make_loader(*args, **kwargs):
    loader = real(*args, **kwargs)
    if os.environ.get("RANK") != "0" or kwargs.get("phase", args[5] if len(args) > 5 else "train") != "train":
        return loader
    class Poisoned:
        def __init__(self): self.n = 0
        def __getattr__(self, name): return getattr(loader, name)
        def __iter__(self):
            for images, targets in loader:
                self.n += 1
                if self.n == 2:
                    images = images.clone(); images[0] = float("inf")
                yield images, targets
    return Poisoned()
train.make_loader = make_loader
from launch.cli import main
sys.exit(main())
""")
    return script


def with_unlabelled_samples(shard_dir: Path, out: Path, count: int) -> Path:
    """A copy of `shard_dir` plus one shard of `count` samples without labels, which the
    catalog skips and counts (the same count on every rank)."""
    shutil.copytree(shard_dir, out)
    manifest = shards.read_manifest(out)
    jpeg = next(shards.iter_samples(out / manifest["shards"][0]["file"]))[1]["jpg"]
    number = len(manifest["shards"])
    name = shards.shard_file("extra", number)
    written = shards.write_shard(out / name, [(f"unlabelled{i}", jpeg, {"labels": []}) for i in range(count)])
    manifest["shards"].append({"shard": number, "file": name, "index": shards.index_file(name),
                               "samples": count, **written})
    shards.write_json(out / "manifest.json", manifest)
    resampling.fit(out, progress=False)  # the epoch's shares now count the new shard
    return out


@pytest.mark.slow
def test_a_skipped_step_leaves_batchnorm_statistics_finite(shard_dir, tmp_path):
    run_dir = tmp_path / "run"
    data = with_unlabelled_samples(shard_dir, tmp_path / "shards", 3)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--master-port", str(31500 + os.getpid() % 1000), str(poisoning_script(tmp_path)),
                           "pretrain", f"data.train={data}", f"run_dir={run_dir}", *TINY,
                           "train.total_images=96", "checkpoint.every_images=96", "data.loader.workers=1"],
                          cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Grad strides do not match" not in proc.stderr  # channels_last weights for channels_last images
    state = checkpoint.load(checkpoint.latest(run_dir))
    assert state["progress"]["bad_steps"] == 1
    buffers = {k: v for k, v in state["model"].items() if "running" in k}
    assert buffers and all(torch.isfinite(v).all() for v in buffers.values()), \
        [k for k, v in buffers.items() if not torch.isfinite(v).all()][:3]
    rows = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    assert all("grad_norm" in r for r in rows if "loss" in r)
    assert rows[-1]["bad_samples"] == 3  # counted once, not once per rank


@pytest.mark.slow
def test_an_eval_boundary_at_the_end_evaluates_once(shard_dir, tmp_path):
    cfg = config(shard_dir, tmp_path / "run", f"data.val={shard_dir}", "train.total_images=64",
                 "checkpoint.every_images=64", "eval.every_images=32", "eval.max_images=16")
    run(cfg, to_dict(cfg))
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert [r["images_seen"] for r in rows if "val/mAP" in r] == [32, 64]
    assert all(r["val/images"] == 16 for r in rows if "val/mAP" in r)
