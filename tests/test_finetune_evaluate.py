"""finetune/evaluate.py (`wsl finetune eval`): each evaluation keeps its own record, old probes
still evaluate, and mistakes are one line before any warning."""
from __future__ import annotations

import json

import pytest
import torch
from helpers import finetune_config as config

from data_tools.common.config import to_dict
from data_tools.format import shards
from finetune.train import run
from launch.cli import main
from launch.commands import evaluate_checkpoint
from pretrain import checkpoint
from pretrain.models import build_model


def test_each_evaluation_keeps_its_own_record_beside_the_runs(data, backbone_file, tmp_path):
    """`wsl finetune eval` wrote results.json into the checkpoint's folder, replacing the
    probe's own record (its C and sweep) and every earlier evaluation. README's FixRes
    example (data.loader.image_size=288 alone) stopped on 'resize_size must be >= image_size'."""
    cfg = config(data, backbone_file, tmp_path / "probe", "mode=linear", "probe.c_steps=2", f"data.val={data['val']}")
    run(cfg, to_dict(cfg))
    probe = (tmp_path / "probe" / "probe.pt")
    own = json.loads((tmp_path / "probe" / "results.json").read_text())
    for shard_dir, overrides in ((data["val"], []), (data["train"], []), (data["val"], ["data.loader.image_size=48"]),
                                 (data["val"], ["eval.image_size=48"])):
        assert evaluate_checkpoint(str(probe), str(shard_dir), overrides) == 0
    assert json.loads((tmp_path / "probe" / "results.json").read_text()) == own and own["C"] is not None
    records = {p.name: json.loads(p.read_text()) for p in (tmp_path / "probe" / "evals").glob("*.json")}
    assert len(records) == 4 and sum(name.startswith("train-") for name in records) == 1
    sizes = {tuple(r["overrides"]): (r["image_size"], r["resize_size"]) for r in records.values()}
    # trained at 32 from 36: a 48 crop comes from 54, by either key
    assert sizes == {(): (32, 36), ("data.loader.image_size=48",): (48, 54), ("eval.image_size=48",): (48, 54)}


def test_a_probe_saved_before_a_key_was_renamed_still_evaluates(data, backbone_file, tmp_path):
    """probe.batch_size became probe.head_batch_size: probe.pt files and fine-tuning
    checkpoints written before record the old key, and `wsl finetune eval` must read them."""
    cfg = config(data, backbone_file, tmp_path / "probe", "mode=linear", "model.name=resnext_tiny")
    recorded = to_dict(cfg)
    recorded["probe"]["batch_size"] = recorded["probe"].pop("head_batch_size")
    classes = shards.read_manifest(data["val"])["num_classes"]
    state = {"model": build_model("resnext_tiny", classes).state_dict(), "config": recorded,
             "progress": {"images_seen": 0}}
    (tmp_path / "probe").mkdir()
    torch.save(state, tmp_path / "probe" / "probe.pt")
    assert evaluate_checkpoint(str(tmp_path / "probe" / "probe.pt"), str(data["val"]), []) == 0
    (record,) = (tmp_path / "probe" / "evals").glob("val-*.json")
    assert json.loads(record.read_text())["num_samples"] == 24


def test_eval_argument_mistakes_are_one_line_before_any_warning(data, backbone_file, tmp_path, capsys):
    """`wsl finetune eval CKPT data.val=PATH` said 'data.val=PATH has no manifest.json', and
    a bad override stopped the evaluation only after the LEAK WARNING."""
    cfg = config(data, backbone_file, tmp_path / "probe", "mode=linear", "probe.c_steps=2")
    run(cfg, to_dict(cfg))
    capsys.readouterr()
    probe = str(tmp_path / "probe" / "probe.pt")
    for argv, message in ((["eval", probe, str(data["val"]), "eval.image_size=3"], "'eval.image_size' (3)"),
                          (["eval", probe, f"data.val={data['val']}"], "SHARDS is the shard directory itself"),
                          (["eval", probe, str(data["val"]), "data.loader.imagesize=48"], "imagesize"),
                          (["eval", probe, str(tmp_path)], "SHARDS: ")):
        assert main(["finetune", *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and err.strip().count("\n") == 0 and "LEAK" not in err, err
    assert not (tmp_path / "probe" / "evals").exists()


@pytest.mark.slow
def test_eval_refuses_a_pretrain_checkpoint_and_multilabel_shards(tmp_path, shard_dir, data, backbone_file):
    checkpoint.save({"model": build_model("resnext_tiny", 3).state_dict(), "config": {"model": {}}}, tmp_path, 8, 1)
    with pytest.raises(ValueError, match="not a `wsl finetune` checkpoint"):
        evaluate_checkpoint(str(checkpoint.path_for(tmp_path, 8)), str(data["val"]), [])
    cfg = config(data, backbone_file, tmp_path / "probe", "mode=linear", "probe.c_steps=2")
    run(cfg, to_dict(cfg))
    with pytest.raises(ValueError, match="multi-label data"):
        evaluate_checkpoint(str(tmp_path / "probe" / "probe.pt"), str(shard_dir), [])
