"""`wsl launch --cluster slurm` on a real slurmctld/slurmd (tests/slurm_cluster.py), through submitit."""
from __future__ import annotations

import hashlib
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from helpers import REPO, build_shards, cli, write_corpus
from pretrain import checkpoint
from slurm_cluster import slurm  # noqa: F401  (the fixture)

# A test waits on up to four SLURM jobs (240 s each at most), the first one also on the cluster's start.
pytestmark = [pytest.mark.slow, pytest.mark.slurm, pytest.mark.timeout(1200)]
TINY = ["device=cpu", "model.name=resnext_tiny", "log.wandb=off", "train.bottleneck_seconds=0",
        "data.loader.batch_size=8", "data.loader.image_size=32", "data.loader.resize_size=36",
        "data.loader.workers=1", "data.loader.backend=pil", "optim.warmup_images=32",
        "optim.schedule=cosine", "log.every_steps=1", "checkpoint.keep=100"]
TOTAL = 400


def launch(slurm, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**slurm.env, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("WANDB_API_KEY", None)
    return subprocess.run(cli("launch", "--cluster", "slurm", *args),
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def submitted(slurm, cwd: Path, job_dir: str, *args: str) -> list[str]:
    done = launch(slurm, cwd, "--job-dir", job_dir, *args)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "squeue -j" in done.stdout and "tail -f" in done.stdout, done.stdout
    return (cwd / job_dir / "job_id").read_text().split()


def logs(job_dir: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(job_dir.glob("*_log.*")))


def pretrain_args(shards: Path, run_dir: Path) -> list[str]:
    return ["--tasks-per-node", "2", "--time", "10", "pretrain", "--", f"data.train={shards}",
            f"run_dir={run_dir}", *TINY, f"train.total_images={TOTAL}", "checkpoint.every_images=32"]


def final_weights(run_dir: Path) -> dict:
    return checkpoint.load(checkpoint.path_for(run_dir, TOTAL))["model"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("slurm-data")
    build_shards(write_corpus(root / "raw", 48), root / "shards", "shards.samples=8")
    return root / "shards"


@pytest.fixture(scope="module")
def straight(slurm, shards, tmp_path_factory) -> tuple[Path, str]:
    """A 2-task DDP pretrain over gloo, uninterrupted: (its folder, its job id)."""
    root = tmp_path_factory.mktemp("straight")
    (job,) = submitted(slurm, root, "job", *pretrain_args(shards, root / "run"))
    assert slurm.wait(job) == {job: "COMPLETED"}, logs(root / "job")
    return root, job


def test_two_task_ddp_pretrain_finishes_and_leaves_no_process(slurm, straight):
    root, job = straight
    assert (root / "run" / "backbone.pt").is_file()
    assert {p.name for p in (root / "job").glob("*_log.err")} == {f"{job}_0_log.err", f"{job}_1_log.err"}
    assert "2 rank(s)" in logs(root / "job")
    assert {"config.yaml", "submission.json", "job_id"} <= {p.name for p in (root / "job").iterdir()}
    time.sleep(1)
    assert slurm.processes_of(job) == [], "a process of the finished job is still running"
    assert slurm.run("sacct", check=False) == "", "the test cluster should have no accounting, like many"


def interrupted_run(slurm, shards, tmp_path, straight, interrupt) -> None:
    run_dir = tmp_path / "run"
    (job,) = submitted(slurm, tmp_path, "job", *pretrain_args(shards, run_dir))
    deadline = time.time() + 180
    while time.time() < deadline and len(checkpoint.list_checkpoints(run_dir)) < 2:
        time.sleep(0.1)
    assert checkpoint.path_for(run_dir, TOTAL) not in checkpoint.list_checkpoints(run_dir), "interrupted too late"
    interrupt(job)
    slurm.release_requeued(job)
    assert slurm.wait(job) == {job: "COMPLETED"}, logs(tmp_path / "job")
    assert "resumed from" in logs(tmp_path / "job")
    a, b = final_weights(straight[0] / "run"), final_weights(run_dir)
    assert all(torch.equal(a[k], b[k]) for k in a), "the requeued run's weights differ from the uninterrupted run"


def test_job_requeued_by_slurm_resumes_to_the_uninterrupted_weights(slurm, shards, tmp_path, straight):
    interrupted_run(slurm, shards, tmp_path, straight, lambda job: slurm.run("scontrol", "requeue", job))


def test_time_limit_signal_checkpoints_on_all_ranks_and_requeues_itself(slurm, shards, tmp_path, straight):
    # What SLURM does signal_delay_s before the time limit: USR2 to every task of the job.
    interrupted_run(slurm, shards, tmp_path, straight,
                    lambda job: slurm.run("scancel", "--signal=USR2", job))
    assert "requeueing (requeue 1 of at most" in logs(tmp_path / "job")


def test_array_build_equals_one_shot_build(slurm, tmp_path):
    raw = write_corpus(tmp_path / "raw", 40)
    single = build_shards(raw, tmp_path / "single", "shards.samples=8")
    ids = submitted(slurm, tmp_path, "job", "--array-parts", "3", "--wandb", "off", "data", "build", "--",
                    f"input.manifest={raw}", f"output={tmp_path / 'parts'}", "shards.samples=8", "workers=1",
                    "progress=false")
    assert len(ids) == 4 and all(i.startswith(ids[0].split("_")[0] + "_") for i in ids[:3])
    merge = ids[3]
    states = {**slurm.wait(ids[0].split("_")[0]), **slurm.wait(merge)}
    assert set(states.values()) == {"COMPLETED"}, logs(tmp_path / "job")
    assert (tmp_path / "parts" / "manifest.json").read_text() == (tmp_path / "single" / "manifest.json").read_text()
    digest = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / "single").glob("*.tar")}
    assert digest == {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / "parts").glob("*.tar")}
    assert single["num_samples"] > 0


def test_bad_config_is_refused_before_submission(slurm, shards, tmp_path):
    before = slurm.run("squeue", "-h", "-o", "%i")
    done = launch(slurm, tmp_path, "--job-dir", "job", "pretrain", "--", f"data.train={shards}",
                  f"run_dir={tmp_path / 'run'}", "train.total_imgs=5")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert "unknown config key 'train.total_imgs'" in done.stderr
    assert slurm.run("squeue", "-h", "-o", "%i") == before
    assert not (tmp_path / "job").exists()


def test_wait_stays_until_the_job_ends_and_exits_with_its_outcome(slurm, tmp_path):
    raw = write_corpus(tmp_path / "raw", 16)
    done = launch(slurm, tmp_path, "--job-dir", "job", "--wait", "--wandb", "off", "data", "build", "--",
                  f"input.manifest={raw}", f"output={tmp_path / 'out'}", "workers=1", "progress=false")
    assert done.returncode == 0, done.stdout + done.stderr + logs(tmp_path / "job")
    (job,) = (tmp_path / "job" / "job_id").read_text().split()
    assert f"job {job}: COMPLETED" in done.stderr and f"done: job(s) {job}" in done.stderr
    assert (tmp_path / "out" / "manifest.json").is_file()  # there when the command returns

    # Valid when submitted, failing when run: the manifest is not JSON lines.
    (tmp_path / "broken.jsonl").write_text("this is not json\n")
    done = launch(slurm, tmp_path, "--job-dir", "job2", "--wait", "--wandb", "off", "data", "build", "--",
                  f"input.manifest={tmp_path / 'broken.jsonl'}", f"output={tmp_path / 'out2'}", "workers=1",
                  "progress=false")
    assert done.returncode == 1, done.stdout + done.stderr
    failed = [line for line in done.stderr.splitlines() if line.startswith("wsl launch: job")]
    assert len(failed) == 1 and "failed" in failed[0] and "log:" in failed[0], done.stderr


def waiting_launch(slurm, cwd: Path, job_dir: str, run_dir: Path, shards: Path) -> tuple[subprocess.Popen, str]:
    """`wsl launch --wait` of a pretrain job, in the background: (the process, the job id)."""
    env = {**slurm.env, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("WANDB_API_KEY", None)
    proc = subprocess.Popen(cli("launch", "--cluster", "slurm", "--wait", "--job-dir", job_dir,
                                *pretrain_args(shards, run_dir)),
                            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not (cwd / job_dir / "job_id").is_file():
        time.sleep(0.1)
    return proc, (cwd / job_dir / "job_id").read_text().split()[0]


def test_wait_follows_a_requeue_and_ctrl_c_stops_only_the_waiting(slurm, shards, tmp_path):
    proc, job = waiting_launch(slurm, tmp_path, "job", tmp_path / "run", shards)
    deadline = time.time() + 180
    while time.time() < deadline and not checkpoint.list_checkpoints(tmp_path / "run"):
        time.sleep(0.1)
    slurm.run("scontrol", "requeue", job)
    slurm.release_requeued(job)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err + logs(tmp_path / "job")
    assert f"job {job}: COMPLETED" in err and "resumed from" in logs(tmp_path / "job")

    proc, job = waiting_launch(slurm, tmp_path, "job2", tmp_path / "run2", shards)
    deadline = time.time() + 120
    while time.time() < deadline and slurm.states(job).get(job) != "RUNNING":
        time.sleep(0.2)
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "stopped waiting; the job(s) go on" in err, err
    assert slurm.wait(job) == {job: "COMPLETED"}, logs(tmp_path / "job2")


def test_a_failed_array_ends_its_merge_and_the_wait(slurm, tmp_path):
    # Valid at submission, failing when run: every part fails, so the merge's `afterok` never
    # holds; SLURM must end it (kill-on-invalid-dep), or it would pend, and --wait with it, forever.
    (tmp_path / "broken.jsonl").write_text("this is not json\n" * 4)
    done = launch(slurm, tmp_path, "--job-dir", "job", "--wait", "--array-parts", "2", "--wandb", "off", "data",
                  "build", "--", f"input.manifest={tmp_path / 'broken.jsonl'}", f"output={tmp_path / 'out'}",
                  "workers=1", "progress=false")
    assert done.returncode == 1, done.stdout + done.stderr
    merge = (tmp_path / "job" / "job_id").read_text().split()[-1]
    assert f"job {merge}: CANCELLED" in done.stderr and "failed: wsl: error: input.manifest" in done.stderr
