"""data_tools/loaders/bottleneck.py: the report measures the loader and the step, leaves the
loader where it was, and keeps its time on a tiny set."""
from __future__ import annotations

import time

import pytest
import torch
from helpers import build_shards, write_corpus
from helpers import loader_config as config

from data_tools.loaders import LoaderConfig, make_loader
from data_tools.loaders.bottleneck import measure
from pretrain.models import build_model


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


@pytest.mark.slow  # measures for a few seconds by design
def test_bottleneck_probe_on_a_tiny_set_measures_and_keeps_its_time(tmp_path):
    shard_dir = tmp_path / "shards"
    build_shards(write_corpus(tmp_path / "raw", 43), shard_dir, "shards.samples=16")
    cfg = LoaderConfig(backend="pil", batch_size=32, workers=1, image_size=32, resize_size=36)
    loader = make_loader(cfg, shard_dir, 0, 1, "cpu", "train")
    model = build_model("resnext_tiny", 8)

    def step(images, targets):
        model(images).sum().backward()

    start = time.perf_counter()
    report = measure(loader, step, seconds=1.0)
    took = time.perf_counter() - start
    assert report.loader_ips > 0 and report.step_ips > 0
    assert took < 2 * 1.0 + 12, f"the probe took {took:.1f} s for 1 s of each measurement"  # start-ups under load
