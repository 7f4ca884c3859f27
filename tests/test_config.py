"""Config loading as a user meets it: ranges declared once, full dotted keys in every
error, numbers as YAML spells them, `wsl config`, and one line for every bad config."""
from __future__ import annotations

import dataclasses
import importlib
import os
import subprocess
import sys
import typing

import pytest
import torch
import yaml
from helpers import REPO, cli

from data_tools.common.config import ConfigError, from_dict, to_dict, upgrade
from data_tools.common.config import build as make_config
from finetune.config import FinetuneConfig
from launch.cli import main
from launch.parser import config_stages
from pretrain.config import PretrainConfig


def config_classes(cls: type, seen: set | None = None) -> set:
    seen = set() if seen is None else seen
    seen.add(cls)
    for hint in typing.get_type_hints(cls).values():
        if dataclasses.is_dataclass(hint) and hint not in seen:
            config_classes(hint, seen)
    return seen


def stage_class(stage: str) -> type:
    module, name = config_stages()[stage].split(":")
    return getattr(importlib.import_module(module), name)


def is_number(hint) -> bool:
    return bool({int, float} & ({hint} | set(typing.get_args(hint))))


@pytest.mark.parametrize("stage", list(config_stages()))
def test_every_numeric_config_value_declares_its_range(stage):
    for cls in config_classes(stage_class(stage)):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if is_number(hints[f.name]):
                assert "range" in f.metadata, f"{cls.__name__}.{f.name} has no bounded(...) range"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_error(capsys, *argv: str) -> str:
    code, _, err = run(capsys, *argv)
    assert code == 2 and err.count("\n") == 1 and err.startswith("wsl: error: "), (code, err)
    return err.strip()


@pytest.mark.parametrize("override, key, words", [
    ("data.loader.batch_size=0", "data.loader.batch_size", "[1, inf)"),
    ("data.loader.workers=-1", "data.loader.workers", "[0, 1024]"),
    ("data.loader.min_scale=0", "data.loader.min_scale", "(0, 1]"),
    ("optim.momentum=1", "optim.momentum", "[0, 1)"),
    ("optim.lr_per_256=nan", "optim.lr_per_256", "(0, inf)"),
    ("train.accum_steps=1e9", "train.accum_steps", "[1, 1024]"),
    ("seed=-3", "seed", "[0, 4294967295]"),
    ("eval.max_images=.inf", "eval.max_images", "must be a whole number"),
])
def test_a_pretrain_value_out_of_range_names_its_full_key(capsys, tmp_path, override, key, words):
    err = one_error(capsys, "pretrain", f"data.train={tmp_path}", f"run_dir={tmp_path / 'run'}", override)
    assert f"config key '{key}'" in err and words in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override, key", [("images.max_side=0", "images.max_side"), ("workers=-1", "workers"),
                                           ("shards.target_mb=0", "shards.target_mb"),
                                           ("images.quality=101", "images.quality"), ("vocab.top_k=0", "vocab.top_k")])
def test_a_build_value_out_of_range_stops_before_any_work(capsys, tmp_path, override, key):
    manifest = tmp_path / "tags.jsonl"
    manifest.write_text('{"path": "a.jpg", "tags": ["#dog"]}\n')
    err = one_error(capsys, "data", "build", f"input.manifest={manifest}", f"output={tmp_path / 'out'}", override)
    assert f"config key '{key}'" in err and "out of range" in err
    assert not (tmp_path / "out").exists()


def test_cross_field_checks_name_their_section():
    with pytest.raises(ConfigError, match=r"in section 'data.loader': .*'resize_size' \(100\) must be >= 'image_size'"):
        make_config(PretrainConfig, [], ["run_dir=r", "data.train=t", "data.loader.resize_size=100"])
    with pytest.raises(ConfigError, match="in section 'optim': .*'nesterov' needs 'momentum' > 0"):
        make_config(PretrainConfig, [], ["run_dir=r", "data.train=t", "optim.momentum=0"])


def test_numbers_as_yaml_spells_them(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("train:\n  total_images: 1e6\noptim:\n  weight_decay: 5e-5\n  warmup_images: 1.0e+4\n")
    cfg = make_config(PretrainConfig, [str(preset)], ["run_dir=r", "data.train=t", "checkpoint.every_images=2.5e5",
                                                      "data.loader.batch_size=+32", "optim.lr_per_256=1"])
    assert cfg.train.total_images == 1_000_000 and type(cfg.train.total_images) is int
    assert cfg.optim.weight_decay == 5e-5 and cfg.optim.warmup_images == 10_000
    assert cfg.checkpoint.every_images == 250_000 and cfg.data.loader.batch_size == 32
    assert cfg.optim.lr_per_256 == 1.0 and type(cfg.optim.lr_per_256) is float
    for bad, why in [("1.5", "whole number"), ("true", "type int"), ("ten", "type int"), ("[1]", "type int")]:
        with pytest.raises(ConfigError, match=f"'data.loader.batch_size' = .* must be .*{why}"):
            make_config(PretrainConfig, [], ["run_dir=r", "data.train=t", f"data.loader.batch_size={bad}"])


def test_yes_for_a_choice_lists_the_choices():
    with pytest.raises(ConfigError, match="'log.wandb' must be one of auto, online, offline, off; got a yes/no"):
        make_config(PretrainConfig, [], ["log.wandb=yes"], check=False)
    assert make_config(PretrainConfig, [], ["log.wandb=no"], check=False).log.wandb == "off"


def test_a_renamed_key_names_its_new_name(capsys, tmp_path):
    """`probe.batch_size` (bn_linear's batch of cached features) read like the loader's
    `data.loader.batch_size`; renamed `probe.head_batch_size`, the old key says so in one line."""
    renamed = "config key 'probe.batch_size' is now 'probe.head_batch_size'"
    assert one_error(capsys, "config", "finetune", "backbone=b", "probe.batch_size=32") == f"wsl: error: {renamed}"
    old = tmp_path / "old.yaml"
    old.write_text("probe:\n  batch_size: 32\n")
    with pytest.raises(ConfigError, match=f"^{renamed}$"):
        make_config(FinetuneConfig, [str(old)], check=False)
    assert make_config(FinetuneConfig, [], ["probe.head_batch_size=32"], check=False).probe.head_batch_size == 32


def test_a_recorded_config_from_before_a_rename_loads_under_the_new_key():
    recorded = to_dict(make_config(FinetuneConfig, [], ["backbone=b", "probe.head_batch_size=32"], check=False))
    recorded["probe"]["batch_size"] = recorded["probe"].pop("head_batch_size")
    assert from_dict(FinetuneConfig, upgrade(FinetuneConfig, recorded), check=False).probe.head_batch_size == 32
    assert "batch_size" in recorded["probe"], "the recorded config itself is left as it was"


# -- wsl config ------------------------------------------------------------------------------

def test_wsl_config_prints_yaml_that_loads_back_with_comments_and_ranges(capsys, tmp_path):
    preset = str(REPO / "configs" / "pretrain" / "tiny.yaml")
    overrides = [f"run_dir=runs/{'x' * 60}", "data.train=shards", "data.loader.batch_size=1e3",
                 "optim.weight_decay=5e-5"]
    code, out, err = run(capsys, "config", "pretrain", "-c", preset, *overrides)
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].startswith("# wsl pretrain: defaults, then ") and preset in lines[0]
    assert any(line.startswith("    batch_size: 1000 ") and line.endswith("# per rank; in [1, inf)")
               for line in lines), out
    assert any(line.startswith("  schedule: cosine ") and line.endswith("# one of step, cosine") for line in lines)
    assert "# not runnable" not in out
    printed = tmp_path / "printed.yaml"
    printed.write_text(out)
    assert yaml.safe_load(out)["data"]["loader"]["batch_size"] == 1000
    assert make_config(PretrainConfig, [str(printed)]) == make_config(PretrainConfig, [preset], overrides)


def test_wsl_config_of_a_build_shows_defaults_and_what_is_missing(capsys):
    code, out, _ = run(capsys, "config", "data", "build", "images.max_side=512")
    assert code == 0
    assert "  max_side: 512 " in out and "# longer side above this is downscaled (None: keep); in [32, inf)" in out
    assert out.splitlines()[-1] == "# not runnable as is: config key 'output' is required (the shard directory)"


def test_wsl_config_refuses_what_the_stage_would(capsys):
    assert "'images.max_side' = 0 is out of range" in one_error(capsys, "config", "data", "build", "images.max_side=0")
    assert "unknown config key 'train.totl'" in one_error(capsys, "config", "pretrain", "train.totl=3")
    with pytest.raises(SystemExit) as exit_:
        main(["config", "nosuchstage"])
    assert exit_.value.code == 2
    assert "invalid choice: 'nosuchstage'" in capsys.readouterr().err


# -- pretrain: every bad config one line, before the run directory exists ----------------------

def test_pretrain_errors_are_one_line_before_the_run_directory(capsys, tmp_path, shard_dir):
    tiny = str(REPO / "configs" / "pretrain" / "tiny.yaml")
    base = ["pretrain", "-c", tiny, f"data.train={shard_dir}"]
    afile = tmp_path / "afile"
    afile.write_text("x")
    run_dir = tmp_path / "run"
    cases = {
        "is a file; give a directory": [*base, f"run_dir={afile}"],
        "'model.name' = 'resnet18' is not a model": [*base, f"run_dir={run_dir}", "model.name=resnet18"],
        "'data.val': ": [*base, f"run_dir={run_dir}", f"data.val={tmp_path / 'no_val'}"],
        "'data.train': ": ["pretrain", "-c", tiny, f"data.train={tmp_path}", f"run_dir={run_dir}"],
        "'train.loss' = ce needs single-label data": [*base, f"run_dir={run_dir}", "train.loss=ce"],
        "'eval.image_size' (4) must be 0": [*base, f"run_dir={run_dir}", "eval.image_size=4"],
        "'eval.resize_size' (70) must be 0 (scaled with the crop) or at least the eval crop (80)":
            [*base, f"run_dir={run_dir}", "eval.image_size=80", "eval.resize_size=70"],
    }
    if not torch.cuda.is_available():
        cases["device=cuda asked for, but no CUDA device is visible"] = [*base, f"run_dir={run_dir}", "device=cuda"]
    for expected, argv in cases.items():
        assert expected in one_error(capsys, *argv), argv
    assert not run_dir.exists()


@pytest.mark.slow
def test_wandb_online_without_an_api_key_is_one_line(shard_dir, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(tmp_path), PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")  # HOME: no ~/.netrc key
    tiny = str(REPO / "configs" / "pretrain" / "tiny.yaml")
    proc = subprocess.run(cli("pretrain", "-c", tiny, f"data.train={shard_dir}", f"run_dir={tmp_path / 'run'}",
                              "log.wandb=online", "data.loader.workers=1"),
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("wsl: error: W&B: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert "log.wandb=offline" in proc.stderr


def test_export_has_its_own_help_and_refuses_a_missing_folder(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        main(["pretrain", "export", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: wsl pretrain export [-h] RUN_DIR [OUT.pt]")
    (tmp_path / "run").mkdir()
    assert "run directory not found" in one_error(capsys, "pretrain", "export", str(tmp_path / "nowhere"))
    missing = tmp_path / "no" / "b.pt"
    assert f"folder {missing.parent} does not exist" in one_error(capsys, "pretrain", "export", str(tmp_path / "run"),
                                                                   str(missing))
    assert "holds no checkpoint" in one_error(capsys, "pretrain", "export", str(tmp_path / "run"))


def test_version_names_ours_and_the_libraries_for_a_bug_report(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    out = capsys.readouterr().out
    assert stop.value.code == 0 and out.startswith("wsl 0.") and "; torch 2." in out and "faiss-cpu" in out


def imported(argv: list[str]) -> tuple[set[str], str]:
    """The modules `wsl ARGV` imported (python -X importtime's list) and its stderr."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "launch.cli", *argv], capture_output=True,
                          text=True, cwd=REPO, timeout=120)
    lines = proc.stderr.splitlines()
    modules = {line.rsplit("|", 1)[1].strip() for line in lines if line.startswith("import time:")}
    return modules, "\n".join(line for line in lines if not line.startswith("import time:"))


@pytest.mark.parametrize("argv, error", [
    (["config", "pretrain", "-c", "configs/pretrain/tiny.yaml", "optim.lr_per_256=0.2"], None),
    (["config", "finetune", "-c", "configs/finetune/cub.yaml", "mode=linear"], None),
    (["pretrain", "-c", "configs/pretrain/tiny.yaml", "run_dir={run}", "data.train=S", "optim.lrr=0.1"], "optim.lrr"),
    (["pretrain", "-c", "configs/pretrain/tiny.yaml", "run_dir={run}", "data.train={shards}", "model.name=resnet5"],
     "model.name"),
    (["pretrain", "-c", "configs/pretrain/tiny.yaml", "run_dir={run}", "data.train={shards}", "train.loss=ce"],
     "train.loss"),
    (["pretrain", "-c", "configs/pretrain/tiny.yaml", "run_dir={run}", "data.train={missing}"], "data.train"),
    (["finetune", "mode=linear", "backbone={missing}", "run_dir={run}", "data.train={shards}"], "backbone"),
])
@pytest.mark.slow
def test_config_resolution_and_its_errors_do_not_load_torch(argv, error, shard_dir, tmp_path):
    """torch takes seconds to import (near a minute on a busy machine): printing a config or
    naming a wrong key in it must not wait for that."""
    modules, stderr = imported([a.format(shards=shard_dir, missing=tmp_path / "missing", run=tmp_path / "run")
                                for a in argv])
    if error:
        assert "wsl: error: " in stderr and error in stderr
    else:
        assert "error" not in stderr
    assert not {"torch", "torchvision"} & modules
