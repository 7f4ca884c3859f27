"""Held-out metrics: hashtag mAP and precision@k, single-label top-k accuracy."""
from __future__ import annotations

import torch
from torch import Tensor


def average_precision(scores: Tensor, targets: Tensor) -> Tensor:
    """Per-tag average precision (K,), as sklearn's average_precision_score; NaN for tags
    without positives.

    AP = sum over thresholds of (recall gain) x (precision at that threshold). Tied scores
    form one threshold, so each positive earns the precision at the end of its tie group.

    Args:
        scores: (N, K) predicted scores, higher is more confident.
        targets: (N, K) k-hot truth (any value > 0 counts as positive).
    """
    scores, order = scores.float().sort(dim=0, descending=True, stable=True)
    hits = (targets > 0).gather(0, order).float()
    n = scores.shape[0]
    rank = torch.arange(1, n + 1, device=scores.device, dtype=torch.float32).unsqueeze(1)
    precision = hits.cumsum(0) / rank
    # Index of the last row of each tie group, spread back over the group's rows.
    last = torch.ones_like(scores, dtype=torch.bool)
    last[:-1] = scores[:-1] != scores[1:]
    index = torch.where(last, rank.long().expand_as(scores) - 1, n)
    group_end = index.flip(0).cummin(0).values.flip(0)
    positives = hits.sum(0)
    return (hits * precision.gather(0, group_end)).sum(0) / positives.where(positives > 0, torch.nan)


def mean_average_precision(scores: Tensor, targets: Tensor) -> float:
    """Mean of `average_precision` over the tags that have at least one positive."""
    ap = average_precision(scores, targets)
    valid = ~ap.isnan()
    if not valid.any():
        raise ValueError("mean_average_precision: no tag has a positive example")
    return ap[valid].mean().item()


def precision_at_k(scores: Tensor, targets: Tensor, k: int) -> float:
    """Fraction of each image's k top-scored tags that are true tags, averaged over images.

    Images without any true tag count as 0, so the value is comparable across splits.
    """
    if not 0 < k <= scores.shape[1]:
        raise ValueError(f"precision_at_k: k={k} must be in 1..{scores.shape[1]}")
    top = scores.topk(k, dim=1).indices
    return (targets.gather(1, top) > 0).float().mean().item()


def topk_accuracy(logits: Tensor, labels: Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[int, float]:
    """{k: fraction of images whose label is among the k highest logits}."""
    if max(ks) > logits.shape[1]:
        raise ValueError(f"topk_accuracy: k={max(ks)} exceeds the {logits.shape[1]} classes")
    top = logits.topk(max(ks), dim=1).indices
    hit = top == labels.unsqueeze(1)
    return {k: hit[:, :k].any(dim=1).float().mean().item() for k in ks}


def confusion_matrix(logits: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """(K, K) counts: row = true class, column = top-1 prediction."""
    pairs = labels.long() * num_classes + logits.argmax(dim=1)
    return pairs.bincount(minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def mean_per_class_accuracy(logits: Tensor, labels: Tensor, num_classes: int) -> float:
    """Top-1 accuracy of each class that occurs in `labels`, averaged over those classes
    (the usual CUB/Places figure: every class weighs the same however many images it has)."""
    matrix = confusion_matrix(logits, labels, num_classes).double()
    support = matrix.sum(dim=1)
    present = support > 0
    return (matrix.diagonal()[present] / support[present]).mean().item()


def most_confused(logits: Tensor, labels: Tensor, num_classes: int, count: int = 10) -> list[dict]:
    """The `count` (true, predicted) class pairs with the most top-1 mistakes, most first:
    {"true", "predicted", "errors", "share" (of the true class's images)}."""
    matrix = confusion_matrix(logits, labels, num_classes)
    support = matrix.sum(dim=1)
    errors = matrix.clone()
    errors.fill_diagonal_(0)
    flat = errors.flatten()
    top = flat.topk(min(count, int((flat > 0).sum()))).indices
    return [{"true": int(i // num_classes), "predicted": int(i % num_classes), "errors": int(flat[i]),
             "share": float(flat[i]) / float(support[i // num_classes])} for i in top]
