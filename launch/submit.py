"""`wsl launch STAGE`: check the stage's config here, then submit the stage as a submitit job
(launch.job runs it; launch.polling follows it)."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import socket
import time
from pathlib import Path

from data_tools.common.config import ConfigError, dump, from_dict
from data_tools.common.config import build as make_config
from data_tools.common.fields import check_ranges
from data_tools.common.log import say
from launch import cluster, parser, stages
from launch.job import StageTask
from launch.lineage import Lineage
from launch.polling import settled, succeeded, wait_slurm


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
    cfg = resolve(stage, stage_args)
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


# Arguments of a stage's parser that are not config keys of the same name.
PARSER_ONLY = {"config", "overrides", "handler", "stage", "command", "flags"}


def resolve(stage: stages.Stage, argv: list[str]):
    """The stage's config from its own command line, as `wsl STAGE ARGV` would build it."""
    args = parser.make_parser().parse_args(parser.with_default_command([*stage.command, *argv]))
    # A stage flag such as `--part 3/8` sets the config key of the same name, unless the
    # subcommand maps its flags itself (`flags`: data dedup's --self, --against).
    if hasattr(args, "flags"):
        flags = args.flags(args)
    else:
        flags = [f"{k}={v}" for k, v in vars(args).items() if k not in PARSER_ONLY and v is not None]
    return make_config(stages.config_class(stage), args.config, [*args.overrides, *flags])


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
