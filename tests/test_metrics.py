"""Hashtag mAP, precision@k and top-k accuracy on hand-checked examples."""
from __future__ import annotations

import math
import os

import pytest
import torch

from pretrain.metrics import (
    average_precision,
    confusion_matrix,
    mean_average_precision,
    mean_per_class_accuracy,
    most_confused,
    precision_at_k,
    topk_accuracy,
)

# Three tags over five images (columns are tags).
SCORES = torch.tensor([
    [0.9, 0.5, 0.3],
    [0.8, 0.5, 0.2],
    [0.7, 0.4, 0.1],
    [0.6, 0.3, 0.4],
    [0.5, 0.2, 0.5],
])
TARGETS = torch.tensor([
    [1, 1, 0],
    [0, 0, 0],
    [1, 0, 0],
    [0, 0, 0],
    [1, 1, 0],
])
# tag 0: positives at ranks 1, 3, 5 -> (1/1 + 2/3 + 3/5) / 3
# tag 1: ranks 1-2 tie (one positive) -> precision 1/2; last positive at rank 5 -> 2/5
# tag 2: no positives -> left out of the mean
AP0 = (1 + 2 / 3 + 3 / 5) / 3      # 0.7555...
AP1 = (1 / 2 + 2 / 5) / 2          # 0.45, not 0.7 as an order-dependent tie break would give


def brute_force_ap(scores: list[float], truth: list[int]) -> float:
    """sklearn's definition: sum over distinct thresholds of (R_n - R_{n-1}) * P_n."""
    positives = sum(truth)
    ap, prev_recall = 0.0, 0.0
    for threshold in sorted(set(scores), reverse=True):
        picked = [t for s, t in zip(scores, truth) if s >= threshold]
        recall = sum(picked) / positives
        ap += (recall - prev_recall) * sum(picked) / len(picked)
        prev_recall = recall
    return ap


def test_average_precision_hand_example():
    ap = average_precision(SCORES, TARGETS)
    assert ap[0].item() == pytest.approx(AP0, rel=1e-6)
    assert ap[1].item() == pytest.approx(AP1, rel=1e-6)
    assert math.isnan(ap[2].item())


def test_mean_average_precision_skips_tags_without_positives():
    assert mean_average_precision(SCORES, TARGETS) == pytest.approx((AP0 + AP1) / 2, rel=1e-6)


def test_average_precision_matches_brute_force_with_ties():
    gen = torch.Generator().manual_seed(0)
    scores = (torch.rand(60, 9, generator=gen) * 8).round() / 8      # many ties
    targets = (torch.rand(60, 9, generator=gen) < 0.3).long()
    targets[:, 4] = 0
    ap = average_precision(scores, targets)
    for k in range(9):
        if k == 4:
            assert math.isnan(ap[k].item())
            continue
        expected = brute_force_ap(scores[:, k].tolist(), targets[:, k].tolist())
        assert ap[k].item() == pytest.approx(expected, rel=1e-5)
    valid = [brute_force_ap(scores[:, k].tolist(), targets[:, k].tolist()) for k in range(9) if k != 4]
    assert mean_average_precision(scores, targets) == pytest.approx(sum(valid) / len(valid), rel=1e-5)


def test_perfect_and_reversed_rankings():
    targets = torch.tensor([[1], [1], [0], [0]])
    assert mean_average_precision(torch.tensor([[4.0], [3.0], [2.0], [1.0]]), targets) == pytest.approx(1.0)
    # positives last: (1/3 + 2/4) / 2
    assert mean_average_precision(torch.tensor([[1.0], [2.0], [3.0], [4.0]]), targets) == pytest.approx(5 / 12)


def test_mean_average_precision_needs_a_positive():
    with pytest.raises(ValueError, match="positive"):
        mean_average_precision(torch.rand(4, 3), torch.zeros(4, 3))


def test_precision_at_k():
    scores = torch.tensor([[0.9, 0.1, 0.8, 0.3], [0.2, 0.7, 0.1, 0.6]])
    targets = torch.tensor([[1, 0, 0, 1], [0, 1, 0, 1]])
    # top-2: row 0 picks tags 0 (true) and 2 (false); row 1 picks 1 and 3 (both true)
    assert precision_at_k(scores, targets, 1) == pytest.approx(1.0)
    assert precision_at_k(scores, targets, 2) == pytest.approx(0.75)
    assert precision_at_k(scores, targets, 3) == pytest.approx((2 / 3 + 2 / 3) / 2)
    assert precision_at_k(scores, targets, 4) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="k=5"):
        precision_at_k(scores, targets, 5)


def test_topk_accuracy():
    logits = torch.tensor([
        [0.1, 0.9, 0.0, 0.0, 0.0, 0.0],    # label 1 is top-1
        [0.6, 0.5, 0.4, 0.3, 0.2, 0.1],    # label 4 is 5th
        [0.6, 0.5, 0.4, 0.3, 0.2, 0.1],    # label 5 is 6th
        [0.0, 0.1, 0.2, 0.9, 0.3, 0.4],    # label 5 is 2nd
    ])
    labels = torch.tensor([1, 4, 5, 5])
    assert topk_accuracy(logits, labels) == {1: pytest.approx(0.25), 5: pytest.approx(0.75)}
    assert topk_accuracy(logits, labels, ks=(2, 6)) == {2: pytest.approx(0.5), 6: pytest.approx(1.0)}
    with pytest.raises(ValueError, match="k=7"):
        topk_accuracy(logits, labels, ks=(1, 7))


def test_each_offline_run_keeps_wandb_in_its_own_folder(tmp_path, monkeypatch):
    """`wsl demo` runs every stage in one process: the first run's W&B folders stuck, so
    the later stages' W&B files went into the pretraining run. A user's own choice stands."""
    from pretrain import loggers
    monkeypatch.setattr(loggers, "USER_SET", {"WANDB_CONFIG_DIR"})
    monkeypatch.setenv("WANDB_CONFIG_DIR", "/mine")
    for name in ("WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    for run in ("pretrain", "finetune"):
        loggers.keep_offline(tmp_path / run / "wandb")
        assert os.environ["WANDB_CACHE_DIR"] == str(tmp_path / run / "wandb" / "cache")
        assert os.environ["WANDB_DATA_DIR"] == str(tmp_path / run / "wandb" / "data")
        assert os.environ["WANDB_CONFIG_DIR"] == "/mine"


def test_single_label_metrics():
    logits = torch.tensor([[3., 1, 0], [3., 1, 0], [0., 3, 1], [0., 3, 1], [0., 3, 1], [0., 0, 3]])
    labels = torch.tensor([0, 0, 1, 2, 2, 2])
    assert confusion_matrix(logits, labels, 3).tolist() == [[2, 0, 0], [0, 1, 0], [0, 2, 1]]
    assert mean_per_class_accuracy(logits, labels, 3) == pytest.approx((1 + 1 + 1 / 3) / 3)
    assert mean_per_class_accuracy(logits, labels, 5) == pytest.approx((1 + 1 + 1 / 3) / 3)  # absent classes skipped
    (pair,) = most_confused(logits, labels, 3, count=5)
    assert pair == {"true": 2, "predicted": 1, "errors": 2, "share": pytest.approx(2 / 3)}
