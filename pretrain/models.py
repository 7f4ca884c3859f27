"""ResNeXt / ResNet backbones with torchvision's layout and parameter names.

The module tree mirrors `torchvision.models.resnet.ResNet` exactly (conv1, bn1,
layer1.0.conv1, ..., layer1.0.downsample.0/1, fc), so torchvision and the public
WSL checkpoints load strictly into these models and back.
"""
from __future__ import annotations

from torch import Tensor, nn

from pretrain.architectures import MODELS

EXPANSION = 4    # bottleneck output channels per stage plane


def conv3x3(inp: int, out: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(inp, out, 3, stride=stride, padding=1, groups=groups, bias=False)


def conv1x1(inp: int, out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(inp, out, 1, stride=stride, bias=False)


class Bottleneck(nn.Module):
    """Post-activation bottleneck, stride on the grouped 3x3 conv (ResNet v1.5)."""

    def __init__(self, inplanes: int, planes: int, width: int, stride: int = 1, groups: int = 1,
                 downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride, groups)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, planes * EXPANSION)
        self.bn3 = nn.BatchNorm2d(planes * EXPANSION)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + shortcut)


class ResNeXt(nn.Module):
    """ResNeXt (Xie et al. 2017); plain ResNet is groups=1, width_per_group=64.

    Args:
        layers: blocks per stage, e.g. [3, 4, 23, 3] for depth 101.
        groups: cardinality C of the grouped 3x3 convs.
        width_per_group: channels per group in stage 1 (the "d" of "32x8d"); doubles per stage.
        base_width: channels of the stem; stage i has base_width * 2**i planes and
            outputs 4x that many channels (64 gives the standard widths).
        num_classes: width of the classifier `fc`; 0 leaves `fc` an identity.
        zero_init_residual: zero each block's last BN gamma, so every residual branch
            starts as identity (Goyal et al. 2017), which helps large-batch training.
    """

    def __init__(self, layers: list[int], groups: int = 32, width_per_group: int = 4,
                 base_width: int = 64, num_classes: int = 1000, zero_init_residual: bool = True):
        super().__init__()
        self.groups = groups
        self.inplanes = base_width
        self.conv1 = nn.Conv2d(3, base_width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(base_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        for i, blocks in enumerate(layers):
            stage = self._make_stage(base_width << i, groups * width_per_group << i, blocks,
                                     stride=1 if i == 0 else 2)
            setattr(self, f"layer{i + 1}", stage)
        self.stages = len(layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.num_features = self.inplanes
        self.fc = self._classifier(num_classes)
        self._init_weights(zero_init_residual)

    def _make_stage(self, planes: int, width: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * EXPANSION:
            downsample = nn.Sequential(conv1x1(self.inplanes, planes * EXPANSION, stride),
                                       nn.BatchNorm2d(planes * EXPANSION))
        stage = [Bottleneck(self.inplanes, planes, width, stride, self.groups, downsample)]
        self.inplanes = planes * EXPANSION
        stage += [Bottleneck(self.inplanes, planes, width, groups=self.groups) for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    def _classifier(self, num_classes: int) -> nn.Module:
        return nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def _init_weights(self, zero_init_residual: bool) -> None:
        # MSRA init as in He et al. 2015 and torchvision; fc keeps nn.Linear's default.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace `fc` with a fresh classifier of `num_classes` outputs (0: identity)."""
        self.fc = self._classifier(num_classes)

    def forward_features(self, x: Tensor, stages: int | None = None) -> Tensor:
        """Images (N, 3, H, W) -> globally pooled features (N, num_features), or those of an
        earlier stage (`stages=3`: res4, num_features // 2 channels) for linear probes."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(self.stages if stages is None else stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.avgpool(x).flatten(1)

    def forward_head(self, feats: Tensor) -> Tensor:
        return self.fc(feats)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def build_model(name: str, num_classes: int, **kw) -> ResNeXt:
    """Build a registered architecture; `kw` overrides its ResNeXt arguments.

    Args:
        name: one of `MODELS`, e.g. "resnext101_32x8d".
        num_classes: classifier width (hashtag vocabulary or class count).
        **kw: e.g. zero_init_residual=False.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model '{name}' (known: {', '.join(MODELS)})")
    return ResNeXt(**{**MODELS[name], "num_classes": num_classes, **kw})


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
