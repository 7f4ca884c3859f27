"""pretrain/backbone.py: backbone files of ours, torchvision's and other trainers' load; a wrong
or damaged one is one line naming what is wrong."""
from __future__ import annotations

import argparse
import datetime
import subprocess

import pytest
import torch
import torchvision
from helpers import FINETUNE_TINY as TINY
from helpers import REPO, child_env, cli

from pretrain import backbone
from pretrain.models import build_model


def tv_features(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.fc = torch.nn.Identity()
    return model.eval()(x)


@pytest.mark.slow
def test_torchvision_state_dict_loads_and_gives_torchvision_features(tmp_path, capsys):
    torch.manual_seed(0)
    tv = torchvision.models.resnext50_32x4d(weights=None)
    for m in tv.modules():  # non-trivial BN statistics, so a mix-up of BN buffers would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    torch.save({"state_dict": {f"module.{k}": v for k, v in tv.state_dict().items()}}, tmp_path / "ddp.pth")
    x = torch.randn(2, 3, 64, 64)
    expected = tv_features(tv, x)
    for name in ("tv.pth", "ddp.pth"):
        source = backbone.read(tmp_path / name)
        assert source.model is None and source.pretrain_config is None
        ours = backbone.build(source, backbone.resolve_name(source, "resnext50_32x4d"), 7).eval()
        assert ours.fc.out_features == 7
        with torch.no_grad():
            assert torch.allclose(ours.forward_features(x), expected, atol=1e-5)
    with pytest.raises(ValueError, match="does not record its architecture: set 'model.name'"):
        backbone.resolve_name(backbone.read(tmp_path / "tv.pth"), "")


@pytest.mark.slow
def test_key_mismatch_is_one_error_listing_keys(tmp_path, data):
    state = torchvision.models.resnet50(weights=None).state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["layer4.2.bn3.running_var"]
    torch.save(state, tmp_path / "r50.pth")
    with pytest.raises(ValueError) as err:
        backbone.build(backbone.read(tmp_path / "r50.pth"), "resnext50_32x4d", 3)
    text = str(err.value)
    assert "\n" not in text and "1 missing key(s) (layer4.2.bn3.running_var)" in text
    assert "1 unexpected key(s) (extra.weight)" in text and "wrong shape" in text  # grouped vs plain convs
    for mode in ("full", "linear"):   # the error comes before the LEAK WARNING (overlap unknown) would
        proc = subprocess.run(cli("finetune", f"mode={mode}", f"backbone={tmp_path / 'r50.pth'}",
                                  "model.name=resnext_tiny", f"data.train={data['train']}", f"data.val={data['val']}",
                                  f"run_dir={tmp_path / 'run'}", *TINY),
                              cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr[-2000:]
        assert "does not fit resnext_tiny" in proc.stderr
        assert "unexpected key(s) (extra.weight, layer1.1.bn1.bias" in proc.stderr


@pytest.mark.slow
def test_bad_backbone_files_are_one_line(tmp_path, data):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    torch.save([1, 2], tmp_path / "list.pt")
    for path, message in ((tmp_path / "none.pt", "not found"), (tmp_path / "junk.pt", "is not a torch file"),
                          (tmp_path / "list.pt", "not a state dict")):
        proc = subprocess.run(cli("finetune", f"backbone={path}", f"data.train={data['train']}",
                                  f"run_dir={tmp_path / 'run'}", *TINY),
                              cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and message in proc.stderr, proc.stderr


def test_other_trainers_checkpoints_load_with_their_saved_args(tmp_path):
    """timm saves {"state_dict", "args": Namespace}, MAE and DeiT {"model", "args"}: a plain
    weights-only load refused both. Other objects are still refused, in one line."""
    weights = build_model("resnext_tiny", 5).state_dict()
    torch.save({"state_dict": weights, "args": argparse.Namespace(lr=0.1), "epoch": 3}, tmp_path / "timm.pth.tar")
    torch.save({"model": weights, "args": argparse.Namespace(lr=0.1)}, tmp_path / "mae.pth")
    trunk = {k for k in weights if not k.startswith("fc.")}
    for name in ("timm.pth.tar", "mae.pth"):
        assert set(backbone.read(tmp_path / name).state_dict) == trunk
    torch.save({"state_dict": weights, "day": datetime.date(2026, 1, 1)}, tmp_path / "dated.pth")
    with pytest.raises(ValueError, match="holds a datetime.date object, which a weights-only load refuses"):
        backbone.read(tmp_path / "dated.pth")
