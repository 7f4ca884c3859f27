"""launch/exits.py: a redirected `wsl` keeps what it says in the order it said it (stdout
line-buffered beside the unbuffered stderr)."""
from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import REPO, child_env
from helpers import finetune_config as config

from data_tools.common.config import to_dict
from finetune.train import run


@pytest.mark.slow
def test_a_redirected_log_keeps_the_order_things_were_said(data, backbone_file, tmp_path):
    """Redirected to a file (`wsl demo > log 2>&1`), stdout was block-buffered beside an
    unbuffered stderr: a stage's results landed after its later messages, next to the next
    stage's header. Two demo stages, as a user's shell (no PYTHONUNBUFFERED) runs them."""
    cfg = config(data, backbone_file, tmp_path / "probe", "mode=linear", "probe.c_steps=2")
    run(cfg, to_dict(cfg))
    stages = "; ".join(f"stage('eval {n}', ['finetune', 'eval', {str(tmp_path / 'probe' / 'probe.pt')!r}, "
                       f"{str(data['val'])!r}])" for n in (1, 2))
    env = {k: v for k, v in child_env().items() if k != "PYTHONUNBUFFERED"}
    with open(tmp_path / "log", "w") as log:
        subprocess.run([sys.executable, "-c", f"from launch.demo import stage; {stages}"], cwd=REPO, env=env,
                       stdout=log, stderr=subprocess.STDOUT, timeout=300, check=True)
    lines = (tmp_path / "log").read_text().splitlines()
    said = [n for n, line in enumerate(lines) if line.startswith(("== eval", f"{data['val']}: 24 images", "results: "))]
    assert [lines[n][:4] for n in said] == ["== e", str(data["val"])[:4], "resu"] * 2, lines
