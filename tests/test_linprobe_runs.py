"""finetune/linprobe.py end to end: probe runs on real shards (one and two ranks, res4,
augmented views, the BN-linear head) and the held-out split. The probe's other tests are in
test_linprobe.py."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import FINETUNE_TINY as TINY
from helpers import REPO, child_env, cli, separable
from helpers import finetune_config as config

from data_tools.common.config import build as make_config
from data_tools.common.config import to_dict
from finetune.config import FinetuneConfig
from finetune.linprobe import split
from finetune.train import run
from launch.commands import evaluate_checkpoint
from pretrain.models import build_model


@pytest.mark.timeout(960)
@pytest.mark.slow
def test_linear_probe_end_to_end_and_eval_agrees(data, backbone_file, tmp_path):
    common = [f"backbone={backbone_file}", f"data.train={data['train']}", f"data.val={data['val']}",
              f"run_dir={tmp_path / 'probe'}", *TINY, "mode=linear", "probe.c_steps=5", "probe.c_max=10"]
    first = subprocess.run(cli("finetune", *common), cwd=REPO, env=child_env(), capture_output=True, text=True,
                           timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "logreg sweep: 5 values of C" in first.stderr and "LEAK WARNING" in first.stderr
    results = json.loads((tmp_path / "probe" / "results.json").read_text())
    assert len(results["sweep"]) == 5 and results["num_samples"] == 24
    assert results["top1"] > 0.5, "colour classes from even a random trunk's features"
    cached = tmp_path / "probe" / "features" / "train.features.npy"
    assert np.load(cached, mmap_mode="r").shape == (72, build_model("resnext_tiny", 0).num_features)
    stamp = cached.stat().st_mtime_ns
    again = subprocess.run(cli("finetune", *common, "probe.head=bn_linear", "probe.epochs=30", "probe.lr=0.5"),
                           cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert cached.stat().st_mtime_ns == stamp, "the cached features were extracted again"
    probe = json.loads((tmp_path / "probe" / "results.json").read_text())
    assert probe["epochs"] == 30 and probe["top1"] > 0.5
    evaluated = subprocess.run(cli("finetune", "eval", str(tmp_path / "probe" / "probe.pt"), str(data["val"]),
                                   "data.loader.workers=1"),
                               cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=300)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert json.loads((tmp_path / "probe" / "results.json").read_text()) == probe, "the probe's record was replaced"
    # the BN-folded head on images gives what the BN head gave on the cached features
    (record,) = (tmp_path / "probe" / "evals").glob("val-*.json")
    assert json.loads(record.read_text())["top1"] == pytest.approx(probe["top1"])
    assert "top-1" in evaluated.stdout and "mean per-class" in evaluated.stdout


@pytest.mark.slow
def test_res4_probe(data, backbone_file, tmp_path):
    cfg = config(data, backbone_file, tmp_path / "probe", "mode=linear", "probe.features=res4", "probe.c_steps=3",
                 f"data.val={data['val']}")
    results = run(cfg, to_dict(cfg))
    width = build_model("resnext_tiny", 0).num_features // 2
    assert np.load(tmp_path / "probe" / "features" / "val.features.npy", mmap_mode="r").shape == (24, width)
    evaluate_checkpoint(str(tmp_path / "probe" / "probe.pt"), str(data["val"]), ["log.wandb=offline"], tmp_path / "eval")
    (record,) = (tmp_path / "eval" / "evals").glob("val-*.json")
    again = json.loads(record.read_text())
    assert again["top1"] == pytest.approx(results["top1"], abs=1 / 24)
    (logged,) = (tmp_path / "eval" / "wandb").glob("offline-run-*/run-*.wandb")
    assert logged.stat().st_size > 0


@pytest.mark.slow
def test_bn_linear_reaches_100_percent_on_separable_features(tmp_path):
    from finetune.linprobe import bn_linear
    x, y = separable(40, 4, 16, 2)
    cfg = make_config(FinetuneConfig, [], ["backbone=x", "run_dir=r", "data.train=t", "probe.epochs=20",
                                           "probe.head_batch_size=32", "probe.lr=0.5", "mode=linear"])
    head, _ = bn_linear(cfg, x, y, 4, torch.device("cpu"))
    with torch.no_grad():
        assert (head(torch.as_tensor(x)).argmax(1).numpy() == y).all()


def test_split_holds_out_a_share_of_every_class():
    labels = np.array([0] * 10 + [1] * 5 + [2] * 1)
    fit_rows, held = split(labels, 0.2, 0)
    assert sorted(np.concatenate([fit_rows, held]).tolist()) == list(range(16))
    assert np.bincount(labels[held], minlength=3).tolist() == [2, 1, 0]


def one_and_two_ranks(args: list[str], tmp_path: Path, port: int) -> subprocess.CompletedProcess:
    """`wsl finetune ARGS` in one process (run_dir one/) and under torchrun on 2 ranks
    (run_dir two/); the 2-rank run's outcome."""
    one = subprocess.run(cli("finetune", *args, f"run_dir={tmp_path / 'one'}"), cwd=REPO, env=child_env(),
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                          "--master-port", str(port + os.getpid() % 1000), "-m", "launch.cli", "finetune", *args,
                          f"run_dir={tmp_path / 'two'}"], cwd=REPO, env=child_env(), capture_output=True,
                         text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    return two


@pytest.mark.timeout(660)
@pytest.mark.slow
def test_two_rank_probe_shares_the_extraction_and_equals_one_process(data, backbone_file, tmp_path):
    # 72 train and 24 val images over 2 ranks in batches of 16: the last batches wrap around.
    two = one_and_two_ranks([f"backbone={backbone_file}", f"data.train={data['train']}", f"data.val={data['val']}",
                             *TINY, "mode=linear", "probe.c_steps=5", "probe.c_max=10", "data.loader.batch_size=16"],
                            tmp_path, 30500)
    for part in ("train", "val"):
        a, b = (np.load(tmp_path / run / "features" / f"{part}.features.npy") for run in ("one", "two"))
        assert a.shape == b.shape and np.allclose(a, b, atol=1e-5)
        assert np.array_equal(*(np.load(tmp_path / run / "features" / f"{part}.labels.npy") for run in ("one", "two")))
    results = [json.loads((tmp_path / run / "results.json").read_text()) for run in ("one", "two")]
    assert results[0]["C"] == results[1]["C"] and results[0]["top1"] == results[1]["top1"]
    assert two.stderr.count("logreg sweep") == 1  # rank 0 alone trains the head


@pytest.mark.timeout(660)
@pytest.mark.slow
def test_bn_linear_on_augmented_views_cached_per_view(data, backbone_file, tmp_path):
    common = [f"backbone={backbone_file}", f"data.train={data['train']}", f"data.val={data['val']}",
              f"run_dir={tmp_path / 'probe'}", *TINY, "mode=linear", "probe.head=bn_linear", "probe.epochs=30",
              "probe.lr=0.5", "probe.views=3", "data.loader.min_scale=0.5"]
    first = subprocess.run(cli("finetune", *common), cwd=REPO, env=child_env(), capture_output=True, text=True,
                           timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    cached = tmp_path / "probe" / "features" / "train.features.npy"
    feats = np.load(cached)
    assert feats.shape == (3 * 72, build_model("resnext_tiny", 0).num_features)
    views = feats.reshape(3, 72, -1)
    assert not np.allclose(views[0], views[1]), "the views are the same crops"
    assert np.array_equal(*(np.load(tmp_path / "probe" / "features" / "train.labels.npy").reshape(3, 72)[[0, 2]]))
    results = json.loads((tmp_path / "probe" / "results.json").read_text())
    assert results["views"] == 3 and results["top1"] > 0.5
    stamp = cached.stat().st_mtime_ns
    again = subprocess.run(cli("finetune", *common, "probe.epochs=20"), cwd=REPO, env=child_env(),
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and cached.stat().st_mtime_ns == stamp, "the views were extracted again"


def test_views_need_the_bn_linear_head(data, backbone_file, tmp_path):
    with pytest.raises(ValueError, match="'probe.views' = 3 needs 'probe.head' = bn_linear"):
        config(data, backbone_file, tmp_path, "mode=linear", "probe.views=3")


@pytest.mark.timeout(660)
@pytest.mark.slow
def test_augmented_views_are_the_same_crops_on_two_ranks(data, backbone_file, tmp_path):
    # Three views over two ranks: rank 0 draws views 0 and 2, rank 1 view 1.
    one_and_two_ranks([f"backbone={backbone_file}", f"data.train={data['train']}", *TINY, "mode=linear",
                       "probe.head=bn_linear", "probe.epochs=3", "probe.views=3", "data.loader.min_scale=0.5"],
                      tmp_path, 31500)
    a, b = (np.load(tmp_path / run / "features" / "train.features.npy") for run in ("one", "two"))
    assert a.shape == b.shape == (3 * 72, a.shape[1]) and np.allclose(a, b, atol=1e-5)
