"""The job side of `wsl launch`: the task that runs one stage on a node.

One generic task for every stage: the job calls `launch.commands.run`, the code path of
`wsl STAGE` typed on a node, with the config resolved at submission. How a job survives the
end of its time slot:

SLURM sends USR2 to every task `signal_delay_s` before the time limit (`--signal=USR2@N`;
on preemption too with `SlurmctldParameters=preempt_send_user_signal`). submitit's own
USR2 handler requeues at once, on global rank 0 only, while the other ranks still train
(submitit issue #9), so the task takes USR2 over: on every rank it asks the stage to stop
(`pretrain.stop.request_stop`; the engine's flag all-reduce makes all ranks write one
checkpoint together), the stage returns 128+USR2, and only then does rank 0 hand over to
submitit's handler, which calls `StageTask.checkpoint()` (a DelayedSubmission of this task,
or None past --max-requeues) and requeues the job. The requeued job resumes from the run
folder's newest checkpoint. A SIGTERM (scancel, or SLURM requeueing the job itself) also
stops at a checkpoint, without a requeue of ours.
"""
from __future__ import annotations

import os
import re
import signal

from data_tools.common.log import say
from launch import commands
from launch.lineage import Lineage

REQUEUE_SIGNAL = signal.SIGUSR2   # submitit's default; NCCL may catch USR1 (submitit PR #1697)


class StageStopped(BaseException):
    """A stop signal ended a stage that has no checkpoint of its own (it restarts where it was).
    A BaseException, like KeyboardInterrupt, so no `except Exception` in the stage swallows it."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StageFailed(RuntimeError):
    pass


class StageTask:
    """What a job runs: one `wsl` stage. Picklable; torch and the stage load inside the job."""

    def __init__(self, argv: list[str], trains: bool, max_requeues: int, lineage: Lineage | None = None):
        self.argv = list(argv)
        self.trains = trains
        self.max_requeues = max_requeues
        self.lineage = lineage
        self.requeues = 0

    def __call__(self) -> int:
        import submitit
        job = submitit.JobEnvironment()
        os.environ.update(dist_environ(job))
        if self.lineage is not None:
            os.environ.update(self.lineage.environ())
        submitit_requeue = signal.getsignal(REQUEUE_SIGNAL)
        signal.signal(REQUEUE_SIGNAL, self._stop)
        say(f"wsl {' '.join(self.argv)} | {job} | requeue {self.restarts()} of at most {self.max_requeues}")
        try:
            code = commands.run(self.argv)
        except StageStopped as stop:
            code = 128 + stop.signum
        if code == 128 + REQUEUE_SIGNAL:
            say(f"stopped by {REQUEUE_SIGNAL.name} (time limit or preemption)")
            if job.global_rank == 0 and callable(submitit_requeue):
                submitit_requeue(REQUEUE_SIGNAL, None)  # calls self.checkpoint(), requeues, exits
            return code
        self._finish(code, job.global_rank)
        return code

    def _finish(self, code: int, rank: int) -> None:
        """A stage that ended otherwise: an error for SLURM (so `afterok` holds back the merge),
        or the lineage of what it made."""
        signum = code - 128 if code > 128 else None
        if signum is not None:
            raise StageFailed(f"wsl {' '.join(self.argv)} stopped by {signal.Signals(signum).name}; "
                              "a requeued or re-launched job resumes from its checkpoint")
        if code != 0:
            raise StageFailed(f"wsl {' '.join(self.argv)} exited with {code}; its error is in this log")
        if rank == 0 and self.lineage is not None and self.lineage.mode != "off":
            say(self.lineage.record())

    def _stop(self, signum, frame) -> None:
        if self.trains:
            from pretrain.stop import request_stop
            request_stop(signum)
        else:
            raise StageStopped(signum)

    def restarts(self) -> int:
        # SLURM counts its own requeues (preemption, scontrol requeue); ours are counted here too.
        return max(self.requeues, int(os.environ.get("SLURM_RESTART_COUNT", 0)))

    def checkpoint(self):
        """submitit's requeue hook (rank 0): this task again, until --max-requeues is spent."""
        import submitit
        if self.restarts() >= self.max_requeues:
            say(f"not requeued: {self.restarts()} requeues done, --max-requeues {self.max_requeues}; "
                "re-launch the same command to resume from the checkpoint")
            return None
        self.requeues = self.restarts() + 1
        say(f"requeueing (requeue {self.requeues} of at most {self.max_requeues})")
        return submitit.helpers.DelayedSubmission(self)



def dist_environ(job) -> dict[str, str]:
    """torchrun's variables from submitit's job environment, so data_tools.common.dist reads one kind."""
    from data_tools.common.dist import job_port  # in the job: the stage imports torch anyway
    master = job.hostnames[0] if job.cluster == "slurm" else "127.0.0.1"
    return {"RANK": str(job.global_rank), "WORLD_SIZE": str(job.num_tasks), "LOCAL_RANK": str(job.local_rank),
            "MASTER_ADDR": master, "MASTER_PORT": str(job_port(int(re.sub(r"\D", "", job.raw_job_id) or 0)))}
