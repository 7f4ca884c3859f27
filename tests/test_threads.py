"""Each rank's thread budget: its share of the cores (CPU set, cgroup quota, local ranks)
less its loader workers, said in the run's first log line, one thread in pool workers."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from helpers import REPO

from data_tools.common import threads


@pytest.fixture
def sixteen_cores(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.setattr(threads, "cgroup_cpus", lambda: None)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)


def test_workers_share_the_node_between_local_ranks(sixteen_cores, monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert threads.cores_per_rank() == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "32")
    assert threads.cores_per_rank() == 1
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert threads.cores_per_rank() == 16


def test_a_cgroup_quota_caps_the_cores(sixteen_cores, monkeypatch):
    monkeypatch.setattr(threads, "cgroup_cpus", lambda: 2.5)  # docker --cpus=2.5
    assert threads.cores() == 3
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert threads.budget(0, loader_workers=0) == 1


@pytest.mark.parametrize("version, files, cores", [
    ("v2", {"cpu.max": "150000 100000\n"}, 1.5),
    ("v2", {"cpu.max": "max 100000\n"}, None),
    ("v1", {"cpu/cpu.cfs_quota_us": "400000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 4.0),
    ("v1", {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
])
def test_the_cgroup_quota_is_read_from_either_version(tmp_path, version, files, cores):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    own = tmp_path / "self-cgroup"  # /proc/self/cgroup: one line per hierarchy
    own.write_text("0::/\n" if version == "v2" else "4:memory:/x\n1:cpu:/\n")
    assert threads.cgroup_cpus(tmp_path, own) == cores


def test_the_budget_is_the_share_less_the_loader_workers(sixteen_cores, monkeypatch):
    assert threads.budget(0, loader_workers=4) == 12
    assert threads.budget(0, loader_workers=16) == 1  # the default: a worker per core
    assert threads.budget(3, loader_workers=16) == 3  # threads=3
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert threads.budget(0, loader_workers=1) == 3


@pytest.mark.slow
def test_pool_workers_run_one_thread():
    """build's and dedup's process pools: a process per core, so one thread in each."""
    code = ("import cv2, torch\nfrom concurrent.futures import ProcessPoolExecutor\n"
            "from data_tools.common.threads import pool_worker\n"
            "def count():\n    return torch.get_num_threads(), cv2.getNumThreads()\n"
            "with ProcessPoolExecutor(2, initializer=pool_worker) as pool:\n"
            "    print(*pool.submit(count).result())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, check=True).stdout
    assert out.split() == ["1", "1"]


@pytest.mark.slow
@pytest.mark.parametrize("override, expect", [([], None), (["threads=3"], 3)])
def test_a_run_holds_to_its_budget_and_says_it_first(shard_dir, tmp_path, capsys, monkeypatch, override, expect):
    import torch

    from launch.cli import main
    for name in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # put back after the test
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    before = torch.get_num_threads()
    try:
        assert main(["pretrain", f"data.train={shard_dir}", f"run_dir={tmp_path / 'run'}", "device=cpu",
                     "model.name=resnext_tiny", "data.loader.batch_size=8", "data.loader.image_size=32",
                     "data.loader.resize_size=36", "data.loader.workers=1", "train.total_images=16",
                     "optim.warmup_images=8", "train.bottleneck_seconds=0", *override]) == 0
        ran_with = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    budget = expect or max(1, threads.cores_per_rank() - 1)
    why = f"threads={expect}" if expect else f"{threads.cores_per_rank()} cores, 1 loader worker"
    run_lines = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("W&B run")]
    assert run_lines[0] == f"threads: {budget} torch ({why})"  # the first line but W&B's offline notice
    assert ran_with == budget
    assert os.environ["OMP_NUM_THREADS"] == str(budget) and os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
