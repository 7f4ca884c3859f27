"""SGD and its weight-decay groups; setting the rate the schedule (schedule.py) gives."""
from __future__ import annotations

import torch
from torch import nn

NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm, nn.LayerNorm)


def param_groups(model: nn.Module, weight_decay: float, skip_bn_bias: bool, trunk_lr_mult: float = 1.0,
                 head: str = "fc.") -> list[dict]:
    """Optimizer groups; with `skip_bn_bias`, norm-layer parameters and biases get no decay.

    Decaying BN's scale and shift only fights the normalisation and biases have
    little to regularise, so large-batch recipes leave them out. With `trunk_lr_mult`
    below 1 (fine-tuning), every parameter not under `head` gets that share of the LR:
    each group's `lr_scale`, which `set_lr` applies.
    """
    params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    norm_ids = {id(p) for m in model.modules() if isinstance(m, NORMS) for p in m.parameters(recurse=False)}
    groups: dict[tuple[float, float], list] = {}
    for name, p in params:
        exempt = skip_bn_bias and (id(p) in norm_ids or name.rsplit(".", 1)[-1] == "bias")
        scale = 1.0 if name.startswith(head) else trunk_lr_mult
        groups.setdefault((0.0 if exempt else weight_decay, scale), []).append(p)
    return [{"params": ps, "weight_decay": wd, "lr_scale": scale} for (wd, scale), ps in groups.items()]


def make_optimizer(model: nn.Module, lr: float, momentum: float = 0.9, weight_decay: float = 1e-4,
                   nesterov: bool = True, skip_bn_bias: bool = True, trunk_lr_mult: float = 1.0) -> torch.optim.SGD:
    """SGD with momentum over `param_groups(model, weight_decay, skip_bn_bias, trunk_lr_mult)`."""
    return torch.optim.SGD(param_groups(model, weight_decay, skip_bn_bias, trunk_lr_mult), lr=lr,
                           momentum=momentum, nesterov=nesterov)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
