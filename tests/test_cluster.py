"""launch/cluster.py: the executor a launch gets (the local one keeps the time limit asked for)."""
from __future__ import annotations

from launch.cluster import LaunchConfig, executor, time_minutes


def test_local_executor_gets_the_time_limit_not_submitits_two_minutes(tmp_path):
    ex = executor(LaunchConfig(time="3:00:00", tasks_per_node=2, signal_delay_s=300), tmp_path, "x")
    assert ex.parameters["timeout_min"] == 180 and ex.parameters["tasks_per_node"] == 2
    assert ex.parameters["signal_delay_s"] == 300
    assert [time_minutes(t) for t in ("90", "1:30", "2-0", "1-01:00:30")] == [90, 2, 2880, 1501]
