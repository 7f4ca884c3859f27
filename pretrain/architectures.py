"""The registered architectures by name: ResNeXt's arguments for each (models.py builds
them). Apart from the model code, so a config's model name is checked without torch."""
from __future__ import annotations

DEPTHS = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}

MODELS = {
    "resnet50": dict(layers=DEPTHS[50], groups=1, width_per_group=64),
    "resnet101": dict(layers=DEPTHS[101], groups=1, width_per_group=64),
    "resnet152": dict(layers=DEPTHS[152], groups=1, width_per_group=64),
    "resnext50_32x4d": dict(layers=DEPTHS[50], groups=32, width_per_group=4),
    "resnext101_32x4d": dict(layers=DEPTHS[101], groups=32, width_per_group=4),
    "resnext101_32x8d": dict(layers=DEPTHS[101], groups=32, width_per_group=8),
    "resnext101_32x16d": dict(layers=DEPTHS[101], groups=32, width_per_group=16),
    "resnext101_32x32d": dict(layers=DEPTHS[101], groups=32, width_per_group=32),
    "resnext101_32x48d": dict(layers=DEPTHS[101], groups=32, width_per_group=48),
    # For CPU tests: the same code paths (grouped convs, downsampling, four stages) in milliseconds.
    "resnext_tiny": dict(layers=[1, 1, 1, 1], groups=4, width_per_group=4, base_width=16),
}
