"""ResNeXt: exact torchvision parity (sizes, names, logits) and the timm-style API."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models import resnet as tv

from pretrain.models import MODELS, ResNeXt, build_model, count_parameters

TV_CONSTRUCTORS = {
    "resnet50": torchvision.models.resnet50,
    "resnet101": torchvision.models.resnet101,
    "resnet152": torchvision.models.resnet152,
    "resnext50_32x4d": torchvision.models.resnext50_32x4d,
    "resnext101_32x8d": torchvision.models.resnext101_32x8d,
}

# Published sizes of the WSL models with a 1000-way classifier, in millions.
WSL_SIZES = {"resnext101_32x16d": 194.0, "resnext101_32x32d": 468.5, "resnext101_32x48d": 828.4}


def shapes(model: nn.Module) -> dict:
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def randomize_bn(model: nn.Module, seed: int) -> None:
    """Give every BN non-trivial affine parameters and running statistics."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                for t in (m.weight, m.bias, m.running_mean):
                    t.copy_(torch.randn(t.shape, generator=gen) * 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)


def test_resnext101_32x8d_has_torchvisions_parameter_count():
    with torch.device("meta"):
        ours = build_model("resnext101_32x8d", 1000)
        theirs = torchvision.models.resnext101_32x8d(weights=None)
    assert count_parameters(ours) == 88_791_336 == count_parameters(theirs)


@pytest.mark.parametrize("name", sorted(TV_CONSTRUCTORS))
def test_torchvision_architectures_match_names_and_shapes(name):
    with torch.device("meta"):
        ours = build_model(name, 1000)
        theirs = TV_CONSTRUCTORS[name](weights=None)
    assert list(shapes(ours).items()) == list(shapes(theirs).items())
    assert count_parameters(ours) == count_parameters(theirs)


@pytest.mark.parametrize("name", sorted(WSL_SIZES))
def test_wsl_sizes_match_paper_and_torchvision_layout(name):
    spec = MODELS[name]
    with torch.device("meta"):
        ours = build_model(name, 1000)
        theirs = tv.ResNet(tv.Bottleneck, spec["layers"], groups=spec["groups"],
                           width_per_group=spec["width_per_group"])
    assert round(count_parameters(ours) / 1e6, 1) == WSL_SIZES[name]
    assert shapes(ours) == shapes(theirs)


@pytest.mark.slow
def test_torchvision_state_dict_round_trip_gives_same_logits():
    torch.manual_seed(0)
    theirs = torchvision.models.resnext50_32x4d(weights=None, num_classes=10)
    randomize_bn(theirs, seed=1)
    ours = build_model("resnext50_32x4d", 10)
    x = torch.randn(2, 3, 64, 64)
    theirs.eval()
    ours.eval()
    with torch.no_grad():
        expected = theirs(x)
        assert not torch.allclose(ours(x), expected, atol=1e-3)   # different weights before loading
        ours.load_state_dict(theirs.state_dict(), strict=True)
        assert torch.allclose(ours(x), expected, rtol=1e-4, atol=1e-5)

        randomize_bn(ours, seed=2)
        back = torchvision.models.resnext50_32x4d(weights=None, num_classes=10).eval()
        back.load_state_dict(ours.state_dict(), strict=True)
        assert torch.allclose(back(x), ours(x), rtol=1e-4, atol=1e-5)


def test_zero_init_residual_zeroes_every_last_bn_gamma():
    model = build_model("resnext_tiny", 5)
    blocks = [b for stage in (model.layer1, model.layer2, model.layer3, model.layer4) for b in stage]
    assert len(blocks) == 4
    assert all(torch.count_nonzero(b.bn3.weight) == 0 for b in blocks)
    assert all(torch.all(b.bn2.weight == 1) and torch.all(b.bn2.bias == 0) for b in blocks)

    plain = build_model("resnext_tiny", 5, zero_init_residual=False)
    assert all(torch.all(b.bn3.weight == 1) for stage in (plain.layer1, plain.layer4) for b in stage)


def test_zero_init_blocks_start_as_identity():
    model = ResNeXt([2, 1, 1, 1], groups=2, width_per_group=2, base_width=8, num_classes=3).eval()
    x = torch.rand(2, 32, 8, 8)          # non-negative, like the previous block's ReLU output
    with torch.no_grad():
        assert torch.equal(model.layer1[1](x), x)


def test_convs_use_msra_fan_out_init():
    model = build_model("resnext_tiny", 5)
    weight = model.layer4[0].conv2.weight          # 128 x 32 x 3 x 3, ~37k samples
    fan_out = weight.shape[0] * weight.shape[2] * weight.shape[3]
    assert weight.std().item() == pytest.approx((2 / fan_out) ** 0.5, rel=0.05)
    assert weight.mean().abs().item() < 0.01


def test_generic_constructor_widths_groups_and_strides():
    model = ResNeXt([1, 1, 2, 1], groups=2, width_per_group=3, base_width=8, num_classes=4)
    assert model.conv1.out_channels == 8
    assert [model.layer1[0].conv2.out_channels, model.layer4[0].conv2.out_channels] == [6, 48]
    assert model.layer3[1].conv2.groups == 2
    assert model.layer2[0].conv2.stride == (2, 2) and model.layer2[0].conv1.stride == (1, 1)
    assert model.num_features == 8 * 8 * 4
    assert len(model.layer3) == 2
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 4)


def test_forward_features_then_head_equals_forward():
    model = build_model("resnext_tiny", 7).eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (3, model.num_features) == (3, 512)
        assert torch.equal(model.forward_head(feats), model(x))


def test_reset_classifier_changes_output_width():
    model = build_model("resnext_tiny", 7).eval()
    x = torch.randn(2, 3, 64, 64)
    model.reset_classifier(11)
    assert model(x).shape == (2, 11)
    assert "fc.weight" in model.state_dict()
    model.reset_classifier(0)
    with torch.no_grad():
        assert torch.equal(model(x), model.forward_features(x))


def test_build_model_rejects_unknown_names():
    with pytest.raises(ValueError, match="resnext101_32x8d"):
        build_model("resnext101_64x8d", 10)


def test_tiny_model_trains_one_step():
    torch.manual_seed(0)
    model = build_model("resnext_tiny", 6)
    x, y = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 3])
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    assert torch.isfinite(loss)
    # With zero-init residuals the blocks' last BN gammas are what learns first.
    assert model.layer4[0].bn3.weight.grad.abs().sum() > 0
    assert model.fc.weight.grad.abs().sum() > 0
