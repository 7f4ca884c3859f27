"""data_tools/loaders/bottleneck.py: the report measures the loader and the step, and leaves the
loader where it was."""
from __future__ import annotations

import torch

from data_tools.loaders import make_loader
from data_tools.loaders.bottleneck import measure
from helpers import loader_config as config


def test_bottleneck_report_measures_both_sides_and_keeps_the_loader_position(shard_dir):
    loader = make_loader(config(), shard_dir)
    state = loader.state_dict()
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(8, loader.catalog.num_classes))

    def step(images, targets):
        torch.nn.functional.binary_cross_entropy_with_logits(model(images), targets).backward()

    report = measure(loader, step, seconds=0.5)
    assert report.loader_ips > 0 and report.step_ips > 0
    assert "bounds this run" in str(report) and report.bound in ("loader", "model")
    assert loader.state_dict() == state
