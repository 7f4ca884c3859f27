"""`wsl launch --cluster slurm` on a real slurmctld/slurmd (tests/slurm_cluster.py), through submitit."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import build_shards, write_corpus
from pretrain import checkpoint
from slurm_cluster import slurm  # noqa: F401  (the fixture)

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
TINY = ["device=cpu", "model.name=resnext_tiny", "log.wandb=off", "train.bottleneck_seconds=0",
        "data.loader.batch_size=8", "data.loader.image_size=32", "data.loader.resize_size=36",
        "data.loader.workers=1", "data.loader.backend=wds", "optim.warmup_images=32",
        "optim.schedule=cosine", "log.every_steps=1", "checkpoint.keep=100"]


def launch(slurm, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**slurm.env, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("WANDB_API_KEY", None)
    return subprocess.run([sys.executable, "-m", "launch.cli", "launch", "--cluster", "slurm", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def job_ids(job_dir: Path) -> list[str]:
    return (job_dir / "job_id").read_text().split()


def submitted(slurm, *args: str, cwd: Path) -> list[str]:
    done = launch(slurm, *args, cwd=cwd)
    assert done.returncode == 0, done.stdout + done.stderr
    job_dir = Path(cwd) / args[args.index("--job-dir") + 1]
    return job_ids(job_dir)


def logs(job_dir: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(job_dir.glob("*_log.*")))


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("slurm-data")
    out = root / "shards"
    build_shards(write_corpus(root / "raw", 48), out, "shards.samples=8")
    return out


def test_two_task_ddp_pretrain_finishes_and_leaves_no_process(slurm, shards, tmp_path):
    ids = submitted(slurm, "--tasks-per-node", "2", "--time", "10", "--job-dir", "job", "pretrain", "--",
                    f"data.train={shards}", f"run_dir={tmp_path / 'run'}", *TINY, "train.total_images=64",
                    "checkpoint.every_images=64", cwd=tmp_path)
    states = slurm.wait(ids[0])
    assert states == {ids[0]: "COMPLETED"}, logs(tmp_path / "job")
    assert (tmp_path / "run" / "backbone.pt").is_file()
    err = logs(tmp_path / "job")
    assert f"{ids[0]}_0_log.err" in err and f"{ids[0]}_1_log.err" in err, "one log per task"
    assert "2 rank(s)" in err, err
    time.sleep(1)
    assert slurm.processes_of(ids[0]) == [], "a process of the finished job is still running"


def test_requeued_job_resumes_to_the_weights_of_an_uninterrupted_run(slurm, shards, tmp_path):
    common = ["--tasks-per-node", "2", "--time", "10", "pretrain", "--", f"data.train={shards}", *TINY,
              "train.total_images=480", "checkpoint.every_images=32"]
    straight = submitted(slurm, "--job-dir", "straight", *common, f"run_dir={tmp_path / 'straight'}", cwd=tmp_path)
    run_dir = tmp_path / "requeued"
    ids = submitted(slurm, "--job-dir", "requeued", *common, f"run_dir={run_dir}", cwd=tmp_path)
    deadline = time.time() + 180
    while time.time() < deadline and len(checkpoint.list_checkpoints(run_dir)) < 2:
        time.sleep(0.2)
    slurm.run("scontrol", "requeue", ids[0])
    assert slurm.wait(straight[0]) == {straight[0]: "COMPLETED"}, logs(tmp_path / "straight")
    assert slurm.wait(ids[0]) == {ids[0]: "COMPLETED"}, logs(tmp_path / "requeued")
    err = logs(tmp_path / "requeued")
    assert "resumed from" in err, err
    a = checkpoint.load(checkpoint.path_for(tmp_path / "straight", 480))["model"]
    b = checkpoint.load(checkpoint.path_for(run_dir, 480))["model"]
    assert all(torch.equal(a[k], b[k]) for k in a), "the requeued run's weights differ from the uninterrupted run"
