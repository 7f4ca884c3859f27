"""`wsl launch STAGE`: check the stage's config here, then run the stage as a submitit job.

One generic task for every stage: the job calls `launch.cli.main`, the code path of `wsl
STAGE` typed on a node, with the config resolved at submission. How a job survives the end
of its time slot:

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

import argparse
import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

from data_tools.common.config import ConfigError, dump, from_dict
from data_tools.common.fields import check_ranges
from data_tools.common.log import say
from launch import cluster, stages
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
            code = run_stage(self.argv)
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


def run_stage(argv: list[str]) -> int:
    from launch.cli import main
    return main(argv)


def dist_environ(job) -> dict[str, str]:
    """torchrun's variables from submitit's job environment, so data_tools.common.dist reads one kind."""
    from data_tools.common.dist import job_port  # in the job: the stage imports torch anyway
    master = job.hostnames[0] if job.cluster == "slurm" else "127.0.0.1"
    return {"RANK": str(job.global_rank), "WORLD_SIZE": str(job.num_tasks), "LOCAL_RANK": str(job.local_rank),
            "MASTER_ADDR": master, "MASTER_PORT": str(job_port(int(re.sub(r"\D", "", job.raw_job_id) or 0)))}


# --- the submitting side -------------------------------------------------------------------

def split_command(words: list[str]) -> tuple[stages.Stage, list[str], list[str]]:
    """`STAGE [launch options] [-- stage args]` -> (stage, launch options, stage args).
    Without `--`, everything after the stage's name is the stage's."""
    for length in (2, 1):
        name = " ".join(words[:length])
        if name in stages.STAGES:
            rest = words[length:]
            if "--" in rest:
                cut = rest.index("--")
                return stages.STAGES[name], rest[:cut], rest[cut + 1:]
            return stages.STAGES[name], [], rest
    raise ConfigError(f"launch: unknown stage {' '.join(words[:2])!r}; stages: {', '.join(stages.STAGES)}")


def launch_config(args: argparse.Namespace, late_options: list[str]) -> cluster.LaunchConfig:
    parser = argparse.ArgumentParser(prog="wsl launch STAGE", add_help=False)
    cluster.add_options(parser)
    given = {**vars(args), **vars(parser.parse_args(late_options))}
    values = {f.name: given[f.name] for f in dataclasses.fields(cluster.LaunchConfig) if f.name in given}
    try:
        cfg = from_dict(cluster.LaunchConfig, values)
        check_ranges(cfg)
    except ValueError as err:  # name the flag the user typed, not the field
        raise ConfigError(re.sub(r"config key '(\w+)'", lambda m: "option --" + m[1].replace("_", "-"),
                                 str(err))) from None
    return cfg


def launch(args: argparse.Namespace) -> int:
    """`wsl launch`: the stage's config is checked before anything is submitted."""
    if not args.command:
        raise ConfigError(f"launch: which stage? one of: {', '.join(stages.STAGES)}")
    stage, late_options, stage_args = split_command(args.command)
    opts = launch_config(args, late_options)
    if opts.array_parts > 1 and stage.merge is None:
        raise ConfigError(f"--array-parts: '{stage.name}' does not run in parts "
                          f"(those that do: {', '.join(s.name for s in stages.STAGES.values() if s.merge)})")
    cfg = stages.resolve(stage, stage_args)
    missing = stages.missing_inputs(stage, cfg)
    if missing:
        raise ConfigError(f"{stage.name}: not found, so not submitted: {'; '.join(missing)}")
    stages.check(stage, cfg)
    job_dir = make_job_dir(opts.job_dir, stage)
    dump(cfg, job_dir / "config.yaml")
    lineage = make_lineage(stage, cfg, opts, job_dir)
    waves = tasks(stage, cfg, opts, job_dir, lineage)
    executor = cluster.executor(opts, job_dir, f"wsl-{stage.job_type}")
    if opts.cluster == "slurm":
        from submitit.core.utils import FailedJobError, FailedSubmissionError
        try:
            jobs = submit_slurm(executor, waves, opts, job_dir, stage)
        except (FailedJobError, FailedSubmissionError) as err:
            raise ConfigError(f"sbatch refused the job: {str(err).strip().splitlines()[-1]}") from None
        record(job_dir, stage, args, opts, [j.job_id for j in jobs])
        print(follow(stage, opts, job_dir, jobs, lineage), flush=True)
        return wait_slurm(jobs) if opts.wait else 0
    record(job_dir, stage, args, opts, [])
    print(follow(stage, opts, job_dir, [], lineage))
    code, ids = run_here(executor, waves, opts.max_parallel)
    record(job_dir, stage, args, opts, ids)
    return code


def tasks(stage: stages.Stage, cfg, opts: cluster.LaunchConfig, job_dir: Path, lineage: Lineage) -> list[list]:
    """What runs, in waves: the stage; or its N parts, then the merge (which records the lineage)."""
    argv = [*stage.command, "-c", str((job_dir / "config.yaml").resolve())]
    if opts.array_parts == 1:
        return [[StageTask(argv, stage.trains, opts.max_requeues, lineage)]]
    n = opts.array_parts
    parts = [StageTask([*argv, "--part", f"{i}/{n}"], stage.trains, opts.max_requeues) for i in range(n)]
    merge = StageTask([*stage.merge, str(stages.folder(cfg, stage.output)), "--parts", str(n)], False,
                      opts.max_requeues, lineage)
    return [parts, [merge]]


def make_job_dir(requested: str | None, stage: stages.Stage) -> Path:
    if requested:
        path = Path(requested)
        if (path / "submission.json").exists():
            raise ConfigError(f"--job-dir {path} already holds a submission; pick a new folder")
        path.mkdir(parents=True, exist_ok=True)
        return path
    base = Path("jobs") / f"{stage.job_type}-{time.strftime('%Y%m%d-%H%M%S')}"
    for n in range(1000):
        path = base.with_name(base.name + (f"-{n}" if n else ""))
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
    raise ConfigError(f"could not make a fresh job folder beside {base}")


def make_lineage(stage: stages.Stage, cfg, opts: cluster.LaunchConfig, job_dir: Path) -> Lineage:
    out = stages.folder(cfg, stage.output)
    reads = [stages.folder(cfg, key) for key in stage.reads]
    log = getattr(cfg, "log", None)  # training stages keep their W&B settings in their config
    group = opts.group or os.environ.get("WANDB_RUN_GROUP") or (reads[0] if reads else out).name
    return Lineage(project=log.project if log else opts.project, group=group, job_type=stage.job_type,
                   mode=log.wandb if log else opts.wandb, run_dir=out if stage.trains else job_dir.resolve(),
                   output=out / stage.artifact, kind="model" if stage.trains else "dataset",
                   inputs=[path / "manifest.json" for path in reads])


def submit_slurm(executor, waves: list[list], opts: cluster.LaunchConfig, job_dir: Path,
                 stage: stages.Stage) -> list:
    """One job, or the parts as one array and the merge as a job that starts when all succeeded."""
    if len(waves) == 1:
        return [executor.submit(waves[0][0])]
    parts, (merge,) = waves
    with executor.batch():
        jobs = [executor.submit(task) for task in parts]
    merger = cluster.executor(dataclasses.replace(opts, nodes=1, tasks_per_node=1, gpus_per_node=0), job_dir,
                              f"wsl-{stage.job_type}-merge")
    # kill-on-invalid-dep: a merge whose parts failed is ended by SLURM, not left pending forever.
    merger.update_parameters(dependency=f"afterok:{jobs[0].job_id.split('_')[0]}",
                             additional_parameters={"kill-on-invalid-dep": "yes"})
    return [*jobs, merger.submit(merge)]


def record(job_dir: Path, stage: stages.Stage, args, opts: cluster.LaunchConfig, ids: list[str]) -> None:
    (job_dir / "job_id").write_text("".join(f"{i}\n" for i in ids))
    (job_dir / "submission.json").write_text(json.dumps({
        "stage": stage.name, "command": ["wsl", "launch", *args.command], "options": dataclasses.asdict(opts),
        "job_ids": ids, "host": socket.gethostname(), "cwd": os.getcwd(),
        "submitted": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=2) + "\n")


def follow(stage: stages.Stage, opts: cluster.LaunchConfig, job_dir: Path, jobs: list, lineage: Lineage) -> str:
    lines = [f"{stage.name}: job folder {job_dir} (config.yaml, submission.json, one log per task)"]
    if jobs:
        first = jobs[0].job_id.split("_")[0]
        what = f"array {first} of {opts.array_parts} parts, then merge job {jobs[-1].job_id}" \
            if opts.array_parts > 1 else first
        lines += [f"submitted: SLURM job {what}",
                  f"follow:    squeue -j {','.join(dict.fromkeys(j.job_id.split('_')[0] for j in jobs))}",
                  f"           tail -f {jobs[0].paths.stderr}"]
    if lineage.mode != "off":
        where = "online" if lineage.resolved_mode() == "online" else \
            f"offline; after the job: wandb sync {lineage.run_dir / 'wandb'}/offline-run-*"
        lines.append(f"W&B:       project {lineage.project}, group {lineage.group}, "
                     f"job type {lineage.job_type} ({where})")
    return "\n".join(lines)


def run_here(executor, waves: list[list], cap: int) -> tuple[int, list[str]]:
    """Local and debug jobs run under this command, at most `cap` at once, each wave after the last."""
    ids = []
    for wave in waves:
        pending, running, done = list(wave), [], []
        while pending or running:
            while pending and len(running) < cap:
                running.append(executor.submit(pending.pop(0)))
                ids.append(running[-1].job_id)
            finished = [job for job in running if settled(job)]
            running = [job for job in running if job not in finished]
            done += finished
            time.sleep(0.2 if running else 0)
        if not succeeded(done):
            return 1, ids
    say(f"done: job(s) {', '.join(ids)}")
    return 0, ids


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
