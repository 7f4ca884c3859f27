"""data_tools/common/dist.py: the distributed environment read from torchrun or SLURM variables."""
from __future__ import annotations

import pytest

from data_tools.common.dist import read_env


@pytest.mark.slow  # runs `scontrol show hostnames` where SLURM is installed
def test_dist_env_reading():
    assert read_env({}).world_size == 1
    env = read_env({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "n1", "MASTER_PORT": "1234"})
    assert (env.rank, env.world_size, env.local_rank, env.master_addr, env.source) == (3, 8, 1, "n1", "torchrun")
    with pytest.raises(RuntimeError, match="WORLD_SIZE"):
        read_env({"RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "x", "MASTER_PORT": "1"})
    slurm = read_env({"SLURM_PROCID": "5", "SLURM_NTASKS": "16", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "4242",
                      "SLURM_JOB_NODELIST": "gpu[012-015]"})
    assert (slurm.rank, slurm.world_size, slurm.local_rank, slurm.source) == (5, 16, 1, "slurm")
    assert slurm.master_addr == "gpu012" and slurm.master_port == 10000 + 4242
