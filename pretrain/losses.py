"""Losses for hashtag (multi-label) and single-label training.

All losses compute in float32 so they stay accurate under bf16/fp16 autocast.
"""
from __future__ import annotations

from functools import partial
from typing import Callable

import torch.nn.functional as F
from torch import Tensor

LossFn = Callable[[Tensor, Tensor], Tensor]


def softmax_khot_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy against the k-hot target divided by k (Mahajan et al. 2018, Sec. 2).

    Args:
        logits: (N, K) scores.
        targets: (N, K) non-negative tag weights, usually k-hot; each row is normalised
            to sum to 1, so an image with k tags puts 1/k on each.

    Rows without any tag carry no target distribution: they add nothing and are left
    out of the batch mean. A batch with no tagged row gives a zero that still depends on
    `logits`, so backward (and DDP's gradient all-reduce) runs as usual.
    """
    targets = targets.float()
    mass = targets.sum(dim=1)
    tagged = mass > 0
    dist = targets / mass.clamp(min=1e-12).unsqueeze(1)
    per_row = -(dist * F.log_softmax(logits.float(), dim=1)).sum(dim=1)
    return (per_row * tagged).sum() / tagged.sum().clamp(min=1)


def sigmoid_bce_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Independent per-tag sigmoid binary cross-entropy, summed over tags, mean over images.

    Summing over the K tags keeps each logit's gradient at the usual scale; a mean over
    17k tags would shrink it 17,000-fold, and the loss would barely train at the
    learning rates that suit the softmax loss.
    """
    per_logit = F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none")
    return per_logit.sum(dim=1).mean()


def single_label_loss(logits: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Plain cross-entropy for int64 class indices, with optional label smoothing."""
    return F.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing)


LOSSES: dict[str, LossFn] = {
    "softmax": softmax_khot_loss,
    "sigmoid": sigmoid_bce_loss,
    "ce": single_label_loss,
}


def make_loss(kind: str, label_smoothing: float = 0.0) -> LossFn:
    """The loss named `kind` ("softmax", "sigmoid" or "ce") as fn(logits, targets).

    Args:
        kind: "softmax" (k-hot softmax, the paper's choice), "sigmoid" or "ce".
        label_smoothing: only for "ce".
    """
    if kind not in LOSSES:
        raise ValueError(f"unknown loss '{kind}' (known: {', '.join(LOSSES)})")
    if label_smoothing and kind != "ce":
        raise ValueError(f"label_smoothing applies only to the 'ce' loss, not '{kind}'")
    if kind == "ce":
        return partial(single_label_loss, label_smoothing=label_smoothing)
    return LOSSES[kind]
