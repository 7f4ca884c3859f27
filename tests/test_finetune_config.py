"""finetune/config.py: config mistakes are refused, and `wsl finetune eval` says its usage."""
from __future__ import annotations

import subprocess

import pytest
from helpers import REPO, child_env, cli

from data_tools.common.config import ConfigError
from data_tools.common.config import build as make_config
from finetune.config import FinetuneConfig


@pytest.mark.slow
def test_config_errors(data):
    with pytest.raises(ValueError, match="'backbone' is required"):
        make_config(FinetuneConfig, [], ["run_dir=r", "data.train=t"])
    with pytest.raises(ValueError, match="must not exceed"):
        make_config(FinetuneConfig, [], ["backbone=b", "run_dir=r", "data.train=t", "probe.c_min=10", "probe.c_max=1"])
    with pytest.raises(ConfigError, match="mode"):
        make_config(FinetuneConfig, [], ["backbone=b", "run_dir=r", "data.train=t", "mode=probe"])
    proc = subprocess.run(cli("finetune", "eval", "only-one-arg"), cwd=REPO, env=child_env(), capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "usage: wsl finetune eval" in proc.stderr and "SHARDS" in proc.stderr
