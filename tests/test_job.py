"""launch/job.py, the job side: the requeue bound and the distributed environment of a SLURM task."""
from __future__ import annotations

from launch.job import StageTask, dist_environ


def test_requeues_stop_at_max_requeues(monkeypatch):
    task = StageTask(["pretrain"], trains=True, max_requeues=2)
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    again = task.checkpoint()
    assert again.function is task and task.requeues == 1
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # SLURM's own count is the one that grows
    assert task.checkpoint() is not None and task.requeues == 2
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    assert task.checkpoint() is None


def test_dist_environ_from_a_slurm_job(monkeypatch):
    from submitit.slurm.slurm import SlurmJobEnvironment
    for key, value in {"SLURM_JOB_ID": "123457", "SLURM_NTASKS": "16", "SLURM_PROCID": "9", "SLURM_LOCALID": "1",
                       "SLURM_JOB_NUM_NODES": "5", "SLURM_NODEID": "4",
                       "SLURM_JOB_NODELIST": "gpu[012-015,020],cpu1"}.items():
        monkeypatch.setenv(key, value)
    env = dist_environ(SlurmJobEnvironment())
    assert env == {"RANK": "9", "WORLD_SIZE": "16", "LOCAL_RANK": "1", "MASTER_ADDR": "gpu012",
                   "MASTER_PORT": str(10000 + 123457 % 20000)}
    assert int(env["MASTER_PORT"]) < 32768  # below the ephemeral ports outgoing connections take
