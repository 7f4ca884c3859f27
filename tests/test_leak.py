"""finetune/leak.py: the guard against evaluating on the images a backbone was trained on."""
from __future__ import annotations

import torch
from helpers import pretrained

from data_tools.format import shards
from finetune import leak
from pretrain import backbone
from pretrain.models import build_model


def test_leak_guard(data, tmp_path):
    pre = tmp_path / "pretrain-shards"
    pre.mkdir()
    manifest = {"shards": [{"file": "train-000000.tar", "sha256": "ab"}]}
    shards.write_json(pre / "manifest.json", manifest)
    source = backbone.read(pretrained(tmp_path / "backbone.pt", pre))
    (warning,) = leak.check(source, [str(data["val"])])
    assert "dedup.against[].fingerprint" in warning and str(data["val"]) in warning
    val_print = shards.fingerprint(shards.read_manifest(data["val"]))
    manifest["dedup"] = {"against": [{"name": "other", "directory": "/x", "fingerprint": "0" * 64, "num_samples": 5},
                                     {"name": "val", "directory": str(data["val"]), "fingerprint": val_print,
                                      "num_samples": 24}],
                         "descriptor": "test", "threshold": 0.9, "removed": 0}
    shards.write_json(pre / "manifest.json", manifest)
    assert leak.check(source, [str(data["val"])]) == []
    assert leak.check(source, [str(data["train"])]), "filtered against val only, not train"
    torch.save(build_model("resnext_tiny", 0).state_dict(), tmp_path / "plain.pth")
    (unknown,) = leak.check(backbone.read(tmp_path / "plain.pth"), [str(data["val"])])
    assert "unknown" in unknown
    gone = backbone.read(pretrained(tmp_path / "moved.pt", tmp_path / "nowhere"))
    assert "not readable here" in leak.check(gone, [str(data["val"])])[0]
