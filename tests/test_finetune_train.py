"""`wsl finetune` (finetune/train.py) full fine-tuning on real shards of generated JPEGs: tiny
ResNeXt, CPU, real processes."""
from __future__ import annotations

import json
import subprocess

import pytest
import torch
from helpers import FINETUNE_TINY as TINY
from helpers import REPO, child_env, cli, run_as_users_do, straight_and_resumed
from helpers import finetune_config as config

from data_tools.common import dist
from data_tools.common.config import to_dict
from finetune.config import FinetuneConfig
from finetune.train import run
from launch.commands import evaluate_checkpoint
from pretrain import backbone, checkpoint
from pretrain.models import build_model
from pretrain.optim import make_optimizer, set_lr
from pretrain.resume import resume_state


@pytest.mark.slow
def test_full_finetuning_learns_the_classes(data, backbone_file, tmp_path, capsys):
    cfg = config(data, backbone_file, tmp_path / "run", f"data.val={data['val']}", "train.total_images=192",
                 "checkpoint.every_images=192", "optim.lr_per_256=0.2", "trunk_lr_mult=0.5")
    results = run(cfg, to_dict(cfg))
    assert "LEAK WARNING" in capsys.readouterr().err   # the backbone was not filtered against val
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert sum("loss" in r for r in rows) >= 5 and "eval/top1" in rows[-1]  # the final evaluation adds, keeps
    assert evaluate_checkpoint(str(checkpoint.latest(tmp_path / "run")), str(data["train"]), [], tmp_path / "on-train") == 0
    assert "LEAK WARNING" in capsys.readouterr().err
    (on_train,) = (tmp_path / "on-train" / "evals").glob(f"train-*.json")
    train = json.loads(on_train.read_text())
    assert train["num_samples"] == 72
    assert train["top1"] > 0.7, f"train top-1 {train['top1']:.2f} is not well above chance (0.17)"
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["num_samples"] == 24 and saved["top1"] == results["top1"]
    assert set(saved) >= {"top1", "top5", "mean_per_class", "confused"}
    assert results["top5"] >= results["top1"] and 0 < results["mean_per_class"] <= 1


@pytest.mark.slow
def test_full_finetuning_of_a_converted_set_with_wandb_as_users_have_it(cub, backbone_file, tmp_path):
    """README's CUB and ImageNet commands: converted samples have `labels` and no `tags`,
    on which the W&B sample captions crashed (KeyError: 'tags'); W&B off hid it."""
    users = [a for a in TINY if not a.startswith("log.wandb")]
    proc = run_as_users_do(cli("finetune", f"backbone={backbone_file}", f"data.train={cub['train']}",
                               f"data.val={cub['test']}", f"run_dir={tmp_path / 'run'}", *users,
                               "train.total_images=48", "checkpoint.every_images=48", "log.sample_images=2"),
                           tmp_path, child_env(), cwd=REPO)
    records = [p.read_bytes() for p in (tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb")]
    assert len(records) == 2, "training, then its final evaluation"
    assert any(b"Black footed Albatross" in r for r in records), "the samples are not captioned with their class"
    assert proc.stderr.count("wandb sync") == 1, "the W&B upload hint is said more than once"
    assert json.loads((tmp_path / "run" / "results.json").read_text())["num_samples"] == 3


def test_trunk_gets_its_share_of_the_lr():
    model = build_model("resnext_tiny", 3)
    opt = make_optimizer(model, lr=1.0, trunk_lr_mult=0.1)
    set_lr(opt, 0.2)
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert lr_of[id(model.fc.weight)] == pytest.approx(0.2) and lr_of[id(model.fc.bias)] == pytest.approx(0.2)
    assert lr_of[id(model.conv1.weight)] == pytest.approx(0.02)
    assert lr_of[id(model.layer4[0].bn3.bias)] == pytest.approx(0.02)
    assert {g["weight_decay"] for g in opt.param_groups if g["lr"] == pytest.approx(0.02)} == {1e-4, 0.0}


@pytest.mark.timeout(900)
@pytest.mark.slow
def test_resume_after_kill9_is_bit_identical(data, backbone_file, tmp_path):
    common = [f"backbone={backbone_file}", f"data.train={data['train']}", *TINY, "train.total_images=128",
              "checkpoint.every_images=32", "trunk_lr_mult=0.5"]
    a, b = straight_and_resumed(cli("finetune", *common), tmp_path, 128, cwd=REPO, env=child_env())
    assert all(torch.equal(a[k], b[k]) for k in a), "the resumed run's weights differ from the uninterrupted run"
    start = build_model("resnext_tiny", 6).state_dict()
    assert not torch.equal(a["layer1.0.conv1.weight"], backbone.read(backbone_file).state_dict["layer1.0.conv1.weight"])
    assert a["fc.weight"].shape == start["fc.weight"].shape


def test_a_finetuning_from_before_a_key_was_renamed_resumes(data, backbone_file, tmp_path):
    cfg = config(data, backbone_file, tmp_path / "run", "model.name=resnext_tiny")
    recorded = to_dict(cfg)
    recorded["probe"]["batch_size"] = recorded["probe"].pop("head_batch_size")
    (tmp_path / "run").mkdir()
    checkpoint.save({"config": recorded, "progress": {"images_seen": 8}}, tmp_path / "run", 8, 1)
    state = resume_state(tmp_path / "run", dist.read_env(), FinetuneConfig, to_dict(cfg), allow_changes=False)
    assert state["progress"]["images_seen"] == 8


@pytest.mark.slow
def test_labelled_sets_are_checked_before_the_run(tmp_path, shard_dir, data, backbone_file):
    """Multi-label training shards, or a val set of other classes, once failed only when the
    final evaluation read data.val, after the whole fine-tuning run."""
    for mode in ("full", "linear"):
        for sets, message in (((shard_dir, data["val"]), "data.val has"),
                              ((data["train"], shard_dir), "data.val has"),
                              ((shard_dir, None), "fine-tuning needs single-label shards")):
            run_dir = tmp_path / f"run-{mode}"
            val = [f"data.val={sets[1]}"] if sets[1] else []
            proc = subprocess.run(cli("finetune", f"mode={mode}", f"backbone={backbone_file}", f"data.train={sets[0]}",
                                      *val, f"run_dir={run_dir}", *TINY),
                                  cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=120)
            assert proc.returncode == 2 and message in proc.stderr, (mode, sets, proc.stderr[-2000:])
            assert proc.stderr.strip().count("\n") == 0 and not run_dir.exists()
