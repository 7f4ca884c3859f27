"""launch/polling.py: `--wait` reads every array task from scontrol's lines."""
from __future__ import annotations


def test_wait_reads_every_array_task_from_scontrol_lines():
    from launch.polling import scontrol_ids
    assert scontrol_ids({"JobId": "7"}) == ["7"]
    assert scontrol_ids({"JobId": "8", "ArrayJobId": "8", "ArrayTaskId": "2"}) == ["8_2"]
    # Pending tasks share one line, with SLURM's range, list, step and %parallelism syntax.
    assert scontrol_ids({"ArrayJobId": "9", "ArrayTaskId": "0-2%4"}) == ["9_0", "9_1", "9_2"]
    assert scontrol_ids({"ArrayJobId": "9", "ArrayTaskId": "0,3,5-6"}) == ["9_0", "9_3", "9_5", "9_6"]
    assert scontrol_ids({"ArrayJobId": "9", "ArrayTaskId": "0-6:3"}) == ["9_0", "9_3", "9_6"]
