"""How `wsl launch` follows its jobs to their end: SLURM's states for `--wait`, and each
ended job's outcome, its first error said in one line."""
from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

from data_tools.common.log import say


def succeeded(jobs: list) -> bool:
    """Each ended job's outcome; the first failure is said in one line with its log."""
    for job in jobs:
        try:
            job.results()
        except Exception as err:  # submitit hands back the job's error as text
            say(f"wsl launch: job {job.job_id} failed: {first_error(job.paths.stderr, err)} "
                f"(log: {job.paths.stderr})")
            return False
    return True


# SLURM states after which a job runs no more (PREEMPTED and SPECIAL_EXIT jobs may be requeued).
ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE")
FORGOTTEN_S = 600   # how long a job may be unknown to both scontrol and sacct before --wait gives up


def wait_slurm(jobs: list, first_poll: float = 2.0, longest_poll: float = 30.0) -> int:
    """`--wait`: each job's SLURM state as it changes, until every job has ended; polls
    spaced out from 2 to 30 s. Ctrl-C stops waiting and leaves the jobs running."""
    seen, unknown_since, poll = {}, {}, first_poll
    try:
        while True:
            states = slurm_states(jobs)
            for job_id, state in states.items():
                if seen.get(job_id) != state:
                    say(f"job {job_id}: {state}")
                    seen[job_id] = state
                if state == "UNKNOWN":
                    unknown_since.setdefault(job_id, time.time())
                else:
                    unknown_since.pop(job_id, None)
            # By state only: a requeued job keeps the result file of its interrupted attempt.
            if all(state.startswith(ENDED) for state in states.values()):
                break
            lost = [job_id for job_id, since in unknown_since.items() if time.time() - since > FORGOTTEN_S]
            if lost:
                say(f"wsl launch: neither scontrol nor sacct knows job(s) {', '.join(lost)} any more; "
                    "stopped waiting")
                return 1
            time.sleep(poll)
            poll = min(longest_poll, poll * 1.5)
    except KeyboardInterrupt:
        say(f"wsl launch: stopped waiting; the job(s) go on: squeue -j {','.join(seen)}")
        return 130
    if not succeeded(jobs):
        return 1
    say(f"done: job(s) {', '.join(j.job_id for j in jobs)}")
    return 0


def slurm_states(jobs: list) -> dict[str, str]:
    """{job id: state}, from slurmctld (scontrol works on clusters without accounting) and,
    for a job it has forgotten (MinJobAge after the end), from sacct through submitit."""
    states = {}
    for base in dict.fromkeys(job.job_id.split("_")[0] for job in jobs):
        states.update(scontrol_states(subprocess.run(["scontrol", "-o", "show", "job", base],
                                                     capture_output=True, text=True).stdout))
    for job in jobs:
        if job.job_id not in states:
            states[job.job_id] = job.watcher.get_state(job.job_id, mode="force")
    return {job.job_id: states[job.job_id] for job in jobs}


def scontrol_states(out: str) -> dict[str, str]:
    """{job id: state} from `scontrol -o show job` output; an array gives each task."""
    states = {}
    for line in out.splitlines():
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        for job_id in scontrol_ids(fields):
            states[job_id] = fields.get("JobState", "UNKNOWN")
    return states


def scontrol_ids(fields: dict) -> list[str]:
    """The job ids one `scontrol -o show job` line stands for: a pending array's tasks share a
    line (ArrayTaskId=0-2%4 or 0,3)."""
    if "ArrayTaskId" not in fields:
        return [fields.get("JobId", "")]
    ids = []
    for part in fields["ArrayTaskId"].split("%")[0].split(","):
        span, _, step = part.partition(":")
        first, _, last = span.partition("-")
        ids += [f"{fields['ArrayJobId']}_{i}" for i in range(int(first), int(last or first) + 1, int(step or 1))]
    return ids


def first_error(log: Path, err: Exception) -> str:
    """The stage's own one-line error if it printed one, else the exception's last line."""
    lines = log.read_text(errors="replace").splitlines() if log.is_file() else []
    mine = [line for line in lines if line.startswith("wsl: error:")]
    return mine[0] if mine else str(err).strip().splitlines()[-1]


def settled(job) -> bool:
    try:
        return job.done()
    except Exception:  # a debug job runs inside done() and raises its error there: results() reports it
        return True
