"""Engine and evaluation correctness, each reproduced before it was fixed (issue 8)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from data_tools.common.config import to_dict
from data_tools.format import resampling, shards
from data_tools.loaders import LoaderConfig, make_loader
from data_tools.loaders.bottleneck import measure
from helpers import PRETRAIN_TINY as TINY
from helpers import REPO, build_shards, child_env, cli, write_corpus
from helpers import pretrain_config as config
from pretrain import checkpoint, evaluate, metrics
from pretrain.engine import grad_norm
from pretrain.losses import sigmoid_bce_loss
from pretrain.models import build_model
from pretrain.schedule import OptimConfig
from pretrain.train import run


def test_warmup_never_runs_downhill_below_a_256_batch():
    cfg = OptimConfig(lr_per_256=0.1, warmup_images=640, schedule="cosine")
    small = [cfg.lr(seen, 32, 6400) for seen in range(0, 640, 32)]
    assert small[0] == pytest.approx(0.1 * 32 / 256)  # the peak of a 32-image batch, held
    assert all(b >= a - 1e-12 for a, b in zip(small, small[1:]))
    large = [cfg.lr(seen, 1024, 6400) for seen in (0, 320, 640)]
    assert large == pytest.approx([0.1, 0.25, 0.4])  # Goyal et al.'s ramp from the 256-batch rate


def test_sigmoid_loss_gives_each_logit_the_usual_gradient():
    logits = torch.zeros(4, 17000, requires_grad=True)
    targets = torch.zeros(4, 17000)
    targets[:, 3] = 1
    sigmoid_bce_loss(logits, targets).backward()
    # d/dz of BCE is sigmoid(z) - y, divided by the images only (not by the 17k tags)
    assert logits.grad[0, 3].item() == pytest.approx((0.5 - 1) / 4)
    assert logits.grad[0, 0].item() == pytest.approx(0.5 / 4)


def test_grad_norm_is_the_l2_total_norm():
    params = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2, 2))]
    params[0].grad = torch.tensor([3.0, 0.0, 0.0])
    params[1].grad = torch.tensor([[0.0, 4.0], [0.0, 0.0]])
    assert grad_norm(params).item() == pytest.approx(5.0)
    params[1].grad[0, 0] = float("inf")
    assert not torch.isfinite(grad_norm(params))


def test_blocked_tag_metrics_equal_the_dense_ones(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(300, 40, generator=gen)
    truth = torch.rand(300, 40, generator=gen) < 0.1
    truth[:, 7] = False  # a tag without positives is left out of the mean
    pairs = truth.nonzero()
    monkeypatch.setattr(evaluate, "WORKSPACE", 256)  # blocks of 6 tags, then of 6 images
    found = evaluate.tag_metrics(scores, pairs, torch.device("cpu"))
    assert found["mAP"] == pytest.approx(metrics.mean_average_precision(scores, truth.float()), abs=1e-6)
    assert found["precision@1"] == pytest.approx(metrics.precision_at_k(scores, truth.float(), 1))
    assert found["precision@5"] == pytest.approx(metrics.precision_at_k(scores, truth.float(), 5))


def eval_loader(shard_dir, rank, world):
    cfg = LoaderConfig(backend="pil", batch_size=4, workers=1, image_size=32, resize_size=36)
    return make_loader(cfg, shard_dir, rank, world, "cpu", "eval")


def test_two_ranks_score_every_image_once_like_one_rank(tmp_path):
    """An odd number of images over 2 ranks: rank 1's last slot is a wrap-around repeat of
    the first image, which must not be scored twice."""
    shard_dir = tmp_path / "shards"
    build_shards(write_corpus(tmp_path / "raw", 16), shard_dir, "shards.samples=4")
    torch.manual_seed(0)
    model = build_model("resnext_tiny", 8).eval()
    one = evaluate.join([evaluate.score(model, eval_loader(shard_dir, 0, 1), 100, False, torch.device("cpu"))])
    parts = [evaluate.score(model, eval_loader(shard_dir, r, 2), 100, False, torch.device("cpu")) for r in (0, 1)]
    usable = len(one["scores"])
    assert usable % 2 == 1 and sum(len(p["rows"]) for p in parts) == usable + 1  # one fill sample
    two = evaluate.join(parts)
    assert len(two["scores"]) == usable
    assert torch.allclose(two["scores"], one["scores"], atol=1e-5)
    assert torch.equal(two["pairs"], one["pairs"])


@pytest.mark.slow
def test_every_evaluation_scores_the_same_images(shard_dir, tmp_path):
    cfg = config(shard_dir, tmp_path / "run", f"data.val={shard_dir}", "eval.max_images=40")
    torch.manual_seed(0)
    model = build_model("resnext_tiny", 8)
    evaluator = evaluate.make_evaluator(cfg, model, type("Env", (), {"rank": 0, "world_size": 1})(),
                                        torch.device("cpu"))
    results = [evaluator() for _ in range(3)]
    assert results[0]["val/images"] == 40
    assert results[0] == results[1] == results[2]


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


@pytest.mark.slow  # measures for a few seconds by design
def test_bottleneck_probe_on_a_tiny_set_measures_and_keeps_its_time(tmp_path):
    shard_dir = tmp_path / "shards"
    build_shards(write_corpus(tmp_path / "raw", 43), shard_dir, "shards.samples=16")
    cfg = LoaderConfig(backend="pil", batch_size=32, workers=1, image_size=32, resize_size=36)
    loader = make_loader(cfg, shard_dir, 0, 1, "cpu", "train")
    model = build_model("resnext_tiny", 8)

    def step(images, targets):
        model(images).sum().backward()

    start = time.perf_counter()
    report = measure(loader, step, seconds=1.0)
    took = time.perf_counter() - start
    assert report.loader_ips > 0 and report.step_ips > 0
    assert took < 2 * 1.0 + 12, f"the probe took {took:.1f} s for 1 s of each measurement"  # start-ups under load


@pytest.mark.slow
def test_an_eval_boundary_at_the_end_evaluates_once(shard_dir, tmp_path):
    cfg = config(shard_dir, tmp_path / "run", f"data.val={shard_dir}", "train.total_images=64",
                 "checkpoint.every_images=64", "eval.every_images=32", "eval.max_images=16")
    run(cfg, to_dict(cfg))
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert [r["images_seen"] for r in rows if "val/mAP" in r] == [32, 64]
    assert all(r["val/images"] == 16 for r in rows if "val/mAP" in r)


def test_evaluation_may_run_at_its_own_resolution(shard_dir, tmp_path):
    cfg = config(shard_dir, tmp_path / "run", "eval.image_size=48")  # TINY: 32 px crops of 36 px
    loader_cfg = evaluate.loader_config(cfg)
    assert (loader_cfg.image_size, loader_cfg.resize_size, loader_cfg.sqrt_resample) == (48, 54, False)
    same = evaluate.loader_config(config(shard_dir, tmp_path / "run"))
    assert (same.image_size, same.resize_size) == (32, 36)
    images, _ = next(iter(make_loader(loader_cfg, shard_dir, 0, 1, "cpu", "eval")))
    assert images.shape[-2:] == (48, 48)
