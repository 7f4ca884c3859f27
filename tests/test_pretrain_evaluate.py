"""pretrain/evaluate.py: blocked tag metrics equal the dense ones; every image scored once,
on any number of ranks, at the evaluation's own resolution; the same images every time."""
from __future__ import annotations

import pytest
import torch
from helpers import build_shards, write_corpus
from helpers import pretrain_config as config

from data_tools.loaders import LoaderConfig, make_loader
from pretrain import evaluate, metrics
from pretrain.models import build_model


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


def test_evaluation_may_run_at_its_own_resolution(shard_dir, tmp_path):
    cfg = config(shard_dir, tmp_path / "run", "eval.image_size=48")  # TINY: 32 px crops of 36 px
    loader_cfg = evaluate.loader_config(cfg)
    assert (loader_cfg.image_size, loader_cfg.resize_size, loader_cfg.sqrt_resample) == (48, 54, False)
    same = evaluate.loader_config(config(shard_dir, tmp_path / "run"))
    assert (same.image_size, same.resize_size) == (32, 36)
    images, _ = next(iter(make_loader(loader_cfg, shard_dir, 0, 1, "cpu", "eval")))
    assert images.shape[-2:] == (48, 48)
