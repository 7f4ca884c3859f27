"""finetune/run_dir.py: a run folder is not reused with another backbone or mode."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import finetune_config as config

from data_tools.common.config import to_dict
from finetune.train import run


@pytest.mark.slow
def test_a_run_dir_is_not_reused_with_another_backbone_or_mode(data, backbone_file, tmp_path):
    """Other probe settings may reuse a probe's folder (and its cached features); another
    backbone or mode would replace its results and mix its W&B run, so they are refused."""
    run_dir = tmp_path / "probe"
    cfg = config(data, backbone_file, run_dir, "mode=linear", "probe.c_steps=2")
    run(cfg, to_dict(cfg))
    cfg = config(data, backbone_file, run_dir, "mode=linear", "probe.c_steps=3")
    run(cfg, to_dict(cfg))
    other = tmp_path / "other.pt"
    other.write_bytes(Path(backbone_file).read_bytes())
    for overrides, key in (((f"backbone={other}",), "backbone: "), (("mode=full",), "mode: 'linear' -> 'full'")):
        cfg = config(data, backbone_file, run_dir, "mode=linear", "probe.c_steps=3", *overrides)
        with pytest.raises(ValueError, match=f"holds a run with another config \\({key}"):
            run(cfg, to_dict(cfg))
    assert json.loads((run_dir / "results.json").read_text())["C"] is not None
