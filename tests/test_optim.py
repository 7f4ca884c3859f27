"""Learning-rate schedule values (pretrain/schedule.py), weight-decay groups and the SGD step
they drive (pretrain/optim.py)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from data_tools.common.config import ConfigError
from data_tools.common.config import build as make_config
from pretrain.models import build_model
from pretrain.optim import make_optimizer, param_groups, set_lr
from pretrain.schedule import OptimConfig, lr_at, peak_lr

# Warm-up 0.2 -> 3.2 over 1000 images, then 3 halvings over the 4000 images left:
# the post-warm-up span is cut into 4 parts, so the rate halves at 2000, 3000 and 4000.
STEP = dict(peak=3.2, start=0.2, warmup_images=1000, total_images=5000, schedule="step", steps=3)


def test_peak_lr_scales_linearly_with_batch():
    assert peak_lr(0.1, 256) == 0.1
    assert peak_lr(0.1, 8064) == pytest.approx(3.15, rel=1e-12)
    assert peak_lr(0.2, 512) == pytest.approx(0.4, rel=1e-12)


@pytest.mark.parametrize("images, expected", [
    (0, 0.2),          # start
    (250, 0.95),       # a quarter of the way up
    (500, 1.7),        # mid-warm-up
    (1000, 3.2),       # end of warm-up
    (1999, 3.2), (2000, 1.6),
    (2999, 1.6), (3000, 0.8),
    (3999, 0.8), (4000, 0.4),
    (5000, 0.4),       # end
    (9000, 0.4),       # past the end the last value holds
])
def test_step_schedule_values(images, expected):
    assert lr_at(images, **STEP) == pytest.approx(expected, rel=1e-12, abs=0)


def test_step_schedule_with_13_halvings_ends_at_peak_over_8192():
    kw = dict(peak=1.0, warmup_images=0, total_images=14_000, schedule="step", steps=13)
    assert [lr_at(i, **kw) for i in (0, 999, 1000, 13_999, 14_000)] == [1.0, 1.0, 0.5, 2 ** -13, 2 ** -13]


@pytest.mark.parametrize("images, expected", [
    (0, 0.0), (100, 0.5), (200, 1.0),                  # warm-up from 0
    (700, 0.5),                                        # cosine midpoint
    (450, 0.5 * (1 + math.cos(math.pi / 4))),          # a quarter of the way down
    (1200, 0.0), (5000, 0.0),
])
def test_cosine_schedule_values(images, expected):
    kw = dict(peak=1.0, start=0.0, warmup_images=200, total_images=1200, schedule="cosine")
    assert lr_at(images, **kw) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_cosine_schedule_respects_floor():
    kw = dict(peak=1.0, warmup_images=0, total_images=1000, schedule="cosine", final_lr=0.1)
    assert lr_at(0, **kw) == 1.0
    assert lr_at(500, **kw) == pytest.approx(0.55, rel=1e-12)
    assert lr_at(1000, **kw) == pytest.approx(0.1, rel=1e-12)


def test_lr_at_rejects_bad_arguments():
    with pytest.raises(ValueError, match="schedule"):
        lr_at(0, **{**STEP, "schedule": "linear"})
    with pytest.raises(ValueError, match="warmup_images"):
        lr_at(0, **{**STEP, "warmup_images": 5000})
    with pytest.raises(ValueError, match="images_seen"):
        lr_at(-1, **STEP)


def test_optim_config_wires_batch_scaling_and_warmup_start():
    cfg = OptimConfig(lr_per_256=0.1, warmup_images=1000, steps=3)
    assert cfg.lr(0, global_batch=8192, total_images=5000) == pytest.approx(0.1, rel=1e-12)
    assert cfg.lr(1000, global_batch=8192, total_images=5000) == pytest.approx(3.2, rel=1e-12)
    assert cfg.lr(4000, global_batch=8192, total_images=5000) == pytest.approx(0.4, rel=1e-12)


def test_optim_config_loads_through_the_config_loader():
    cfg = make_config(OptimConfig, [], ["schedule=cosine", "lr_per_256=1", "final_lr=0.001"])
    assert (cfg.schedule, cfg.lr_per_256, cfg.final_lr) == ("cosine", 1.0, 0.001)
    OptimConfig().check()
    with pytest.raises(ValueError, match="'schedule'"):
        make_config(OptimConfig, [], ["schedule=poly"])
    with pytest.raises(ValueError, match="'nesterov'"):
        OptimConfig(momentum=0.0).check()
    with pytest.raises(ConfigError, match="'warmup'"):
        make_config(OptimConfig, [], ["warmup=10"])


def test_param_groups_exempt_norm_params_and_biases():
    model = build_model("resnext_tiny", 5)
    groups = param_groups(model, weight_decay=1e-4, skip_bn_bias=True)
    assert [g["weight_decay"] for g in groups] == [1e-4, 0.0]
    names = {id(p): name for name, p in model.named_parameters()}
    decay = {names[id(p)] for p in groups[0]["params"]}
    no_decay = {names[id(p)] for p in groups[1]["params"]}
    assert decay | no_decay == set(names.values()) and not decay & no_decay
    assert all(n.endswith(".weight") and ("conv" in n or n.endswith("downsample.0.weight") or n == "fc.weight")
               for n in decay)
    assert {"bn1.weight", "bn1.bias", "layer2.0.bn3.weight", "layer2.0.downsample.1.weight", "fc.bias"} <= no_decay
    assert "layer1.0.conv2.weight" in decay


def test_param_groups_without_skipping_and_frozen_params():
    model = build_model("resnext_tiny", 5)
    (group,) = param_groups(model, weight_decay=5e-5, skip_bn_bias=False)
    assert group["weight_decay"] == 5e-5
    assert len(group["params"]) == len(list(model.parameters()))
    model.conv1.weight.requires_grad_(False)
    assert sum(len(g["params"]) for g in param_groups(model, 1e-4, True)) == len(list(model.parameters())) - 1


def test_sgd_step_decays_only_the_decay_group():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=True), nn.BatchNorm2d(4))
    with torch.no_grad():
        model[1].weight.fill_(2.0)
    before = [p.detach().clone() for p in model.parameters()]
    opt = make_optimizer(model, lr=0.1, momentum=0.9, weight_decay=0.1)
    assert opt.defaults["nesterov"] and opt.defaults["momentum"] == 0.9
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    # zero gradient: nesterov's first step moves p by lr * (1 + momentum) * wd * p
    assert torch.allclose(model[0].weight, before[0] * (1 - 0.1 * 1.9 * 0.1))
    assert torch.equal(model[0].bias, before[1])
    assert torch.equal(model[1].weight, before[2])


def test_set_lr_updates_every_group():
    opt = make_optimizer(build_model("resnext_tiny", 5), lr=0.5)
    assert len(opt.param_groups) == 2
    set_lr(opt, 0.125)
    assert [g["lr"] for g in opt.param_groups] == [0.125, 0.125]


def test_warmup_never_runs_downhill_below_a_256_batch():
    cfg = OptimConfig(lr_per_256=0.1, warmup_images=640, schedule="cosine")
    small = [cfg.lr(seen, 32, 6400) for seen in range(0, 640, 32)]
    assert small[0] == pytest.approx(0.1 * 32 / 256)  # the peak of a 32-image batch, held
    assert all(b >= a - 1e-12 for a, b in zip(small, small[1:]))
    large = [cfg.lr(seen, 1024, 6400) for seen in (0, 320, 640)]
    assert large == pytest.approx([0.1, 0.25, 0.4])  # Goyal et al.'s ramp from the 256-batch rate
