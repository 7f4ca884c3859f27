"""pretrain/checkpoint.py: a crash while a checkpoint is written keeps the previous one; only the
last `keep` are kept."""
from __future__ import annotations

import signal
import subprocess
import sys

import pytest
import torch
from helpers import REPO

from pretrain import checkpoint
from pretrain.models import build_model


@pytest.mark.slow
def test_crash_during_checkpoint_write_keeps_previous(tmp_path):
    model = build_model("resnext_tiny", 10)
    checkpoint.save({"model": model.state_dict()}, tmp_path, 100, keep=3)
    script = f"""
import os, signal, sys
sys.path.insert(0, {str(REPO)!r})
import torch
from pretrain import checkpoint
real = torch.save
def dying_save(obj, f):
    f.write(b"half a checkpoint")
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
torch.save = dying_save
checkpoint.save({{"x": torch.zeros(3)}}, {str(tmp_path)!r}, 200, keep=3)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert len(list(tmp_path.glob("checkpoint-000000000000200.pt.*.tmp"))) == 1
    latest = checkpoint.latest(tmp_path)
    assert latest == checkpoint.path_for(tmp_path, 100)
    restored = checkpoint.load(latest)["model"]
    assert all(torch.equal(restored[k], v) for k, v in model.state_dict().items())


def test_keep_last_n(tmp_path):
    for seen in (10, 20, 30, 40):
        checkpoint.save({"seen": seen}, tmp_path, seen, keep=2)
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == [
        "checkpoint-000000000000030.pt", "checkpoint-000000000000040.pt"]
