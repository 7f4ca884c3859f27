"""`wsl launch` without SLURM: local jobs (real processes through submitit), option checks,
the requeue bound, the distributed environment, and W&B lineage read back from offline files."""
from __future__ import annotations

import json
import os
import re
import subprocess
from datetime import datetime
from pathlib import Path

import pytest
from helpers import REPO, build_shards, cli, write_corpus

from launch.cluster import LaunchConfig, executor, time_minutes
from launch.job import StageTask, dist_environ
from pretrain import checkpoint

TINY = ["device=cpu", "model.name=resnext_tiny", "train.bottleneck_seconds=0", "data.loader.batch_size=8",
        "data.loader.image_size=32", "data.loader.resize_size=36", "data.loader.workers=1",
        "data.loader.backend=pil", "optim.warmup_images=16", "log.every_steps=1", "log.sample_images=0"]


def wsl_launch(cwd: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = env or {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("WANDB_API_KEY", None)
    return subprocess.run(cli("launch", *args), cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def build_args(raw: Path, out: Path) -> list[str]:
    return ["data", "build", "--", f"input.manifest={raw}", f"output={out}", "shards.samples=8", "workers=1",
            "progress=false"]


# -- local jobs ------------------------------------------------------------------------------

def job_span(log: Path) -> tuple[datetime, datetime]:
    """When a job's task started and ended, from submitit's own log lines."""
    stamps = re.findall(r"\((\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+)\) - (Starting with|Exiting after)", log.read_text())
    times = {kind: datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f") for stamp, kind in stamps}
    return times["Starting with"], times["Exiting after"]


@pytest.mark.slow
def test_local_array_build_runs_parts_one_at_a_time_and_equals_one_shot(tmp_path):
    raw = write_corpus(tmp_path / "raw", 24)
    build_shards(raw, tmp_path / "single", "shards.samples=8")
    stage, args = build_args(raw, tmp_path / "parts")[:2], build_args(raw, tmp_path / "parts")[2:]
    # The form: launch options after the stage's name, its own arguments after `--`.
    done = wsl_launch(tmp_path, "--wandb", "off", "--job-dir", "job", *stage, "--array-parts", "2",
                      "--max-parallel", "1", *args)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "parts" / "manifest.json").read_text() == (tmp_path / "single" / "manifest.json").read_text()
    spans = sorted(job_span(p) for p in (tmp_path / "job").glob("*_0_log.out"))
    assert len(spans) == 3, "2 parts and the merge, one log each"
    assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:])), \
        f"jobs overlapped despite --max-parallel 1: {spans}"
    record = json.loads((tmp_path / "job" / "submission.json").read_text())
    assert record["stage"] == "data build" and record["options"]["array_parts"] == 2
    assert len((tmp_path / "job" / "job_id").read_text().split()) == 3


@pytest.mark.slow
def test_a_failing_local_job_is_one_line_naming_its_log(tmp_path):
    # There when submitted (a missing one is refused before: test below), unreadable when run.
    (tmp_path / "broken.jsonl").write_text("this is not json\n")
    done = wsl_launch(tmp_path, "--wandb", "off", "--job-dir", "job", *build_args(tmp_path / "broken.jsonl",
                                                                                    tmp_path / "out"))
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert "wsl: error: input.manifest" in last and "not JSON" in last and "_0_log.err" in last, done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("options, message", [
    (["--nodes", "0"], "option --nodes = 0 is out of range"),
    (["--max-requeues", "-1"], "option --max-requeues = -1 is out of range"),
    (["--array-parts", "0"], "option --array-parts = 0 is out of range"),
    (["--time", "soon"], "option --time 'soon' must be"),
    (["--time", "1"], "must be longer than --signal-delay-s 120"),
    (["--mem", "lots"], "option --mem 'lots' must look like 64G"),
    (["--nodes", "2"], "option --nodes 2 needs --cluster slurm"),
    (["--array-parts", "2", "pretrain"], "'pretrain' does not run in parts"),
    (["data", "bake"], "unknown stage 'data bake'"),
    (["data", "build", "--", "vocab.top_kk=3"], "unknown config key 'vocab.top_kk'"),
    (["data", "build", "--", "input.manifest=m.jsonl", "output=out", "workers=many"], "'workers' = 'many' must be of type int"),
    (["data", "build", "--", "input.manifest=nowhere.jsonl", "output=out"],
     "data build: not found, so not submitted: input.manifest = nowhere.jsonl"),
    (["pretrain", "--", "data.train=no_shards", "run_dir=run"], "pretrain: not found, so not submitted: data.train"),
    (["data", "dedup", "--", "train=.", "against=[val=no_val]", "out=o"], "not submitted: against = no_val"),
])
def test_bad_launch_is_one_line_before_anything_is_made(tmp_path, options, message):
    stage = [] if any(o in ("pretrain", "data") for o in options) else ["data", "build"]
    done = wsl_launch(tmp_path, *options, *stage)
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and message in done.stderr, done.stderr
    assert not (tmp_path / "jobs").exists()


@pytest.mark.timeout(660)
@pytest.mark.slow
def test_a_used_job_dir_is_refused(tmp_path):
    raw = write_corpus(tmp_path / "raw", 8)
    first = wsl_launch(tmp_path, "--wandb", "off", "--job-dir", "job", *build_args(raw, tmp_path / "out"))
    assert first.returncode == 0, first.stderr[-2000:]
    again = wsl_launch(tmp_path, "--wandb", "off", "--job-dir", "job", *build_args(raw, tmp_path / "out"))
    assert again.returncode == 2 and "already holds a submission" in again.stderr


@pytest.mark.slow
def test_slurm_without_sbatch_is_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "PATH": str(tmp_path)}
    done = wsl_launch(tmp_path, "--cluster", "slurm", "--job-dir", "job", *build_args(tmp_path / "m.jsonl",
                                                                                      tmp_path / "o"), env=env)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "wsl: error: --cluster slurm: no sbatch on this machine (use --cluster local here)"]
    assert not (tmp_path / "job").exists()


def test_local_executor_gets_the_time_limit_not_submitits_two_minutes(tmp_path):
    ex = executor(LaunchConfig(time="3:00:00", tasks_per_node=2, signal_delay_s=300), tmp_path, "x")
    assert ex.parameters["timeout_min"] == 180 and ex.parameters["tasks_per_node"] == 2
    assert ex.parameters["signal_delay_s"] == 300
    assert [time_minutes(t) for t in ("90", "1:30", "2-0", "1-01:00:30")] == [90, 2, 2880, 1501]


# -- the job side ----------------------------------------------------------------------------

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


# -- W&B lineage, read back from the offline files ---------------------------------------------

def wandb_records(run_dir: Path) -> list:
    """Every record of an offline run's .wandb file (LevelDB-log framing of protobuf Records)."""
    from wandb.proto import wandb_internal_pb2 as pb
    (path,) = run_dir.glob("run-*.wandb")
    data, pos, chunk, records = path.read_bytes(), 7, b"", []
    block = 32768
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        chunk += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST
            record = pb.Record()
            record.ParseFromString(chunk)
            records.append(record)
            chunk = b""
    return records


def key(item) -> str:
    return item.key or ".".join(item.nested_key)


def of_type(records: list, kind: str) -> list:
    return [getattr(r, kind) for r in records if r.WhichOneof("record_type") == kind]


@pytest.mark.timeout(660)
@pytest.mark.slow
def test_pipeline_joins_one_wandb_group_with_artifact_lineage(tmp_path):
    raw = write_corpus(tmp_path / "raw", 16)
    (tmp_path / "home").mkdir()   # offline W&B (its artifacts too) stays in the run and job folders
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "XDG_"))}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", HOME=str(tmp_path / "home"))
    built = wsl_launch(tmp_path, "--group", "ig-test", "--wandb", "offline", "--job-dir", "build",
                       *build_args(raw, tmp_path / "shards"), env=env)
    assert built.returncode == 0, built.stderr[-3000:]
    assert "wandb sync" in built.stdout and "wandb sync" in (next((tmp_path / "build").glob("*_0_log.err"))).read_text()
    trained = wsl_launch(tmp_path, "--group", "ig-test", "--job-dir", "train", "pretrain", "--",
                         f"data.train={tmp_path / 'shards'}", f"run_dir={tmp_path / 'run'}", *TINY,
                         "train.total_images=32", "checkpoint.every_images=32", "log.wandb=offline", env=env)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert not [p for p in (tmp_path / "home").rglob("*") if "wandb" in p.name]

    (build_run,) = (tmp_path / "build" / "wandb").glob("offline-run-*")
    records = wandb_records(build_run)
    (run,) = of_type(records, "run")
    assert (run.run_group, run.job_type) == ("ig-test", "data-build")
    (dataset,) = of_type(records, "artifact")
    assert (dataset.name, dataset.type) == ("shards", "dataset")
    entries = {e.path: e for e in dataset.manifest.contents}
    assert entries["manifest.json"].ref.endswith("/shards/manifest.json"), "a reference, not an upload"

    train_runs = sorted((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(train_runs) == 2, "the training run, then the same run continued for the lineage"
    records = [wandb_records(path) for path in train_runs]
    runs = [of_type(r, "run")[0] for r in records]
    run_id = (tmp_path / "run" / "wandb_id.txt").read_text()
    assert {(r.run_id, r.run_group, r.job_type) for r in runs} == {(run_id, "ig-test", "pretrain")}
    losses = [json.loads(item.value_json) for h in of_type(records[0], "history") for item in h.item
              if key(item) == "loss"]
    assert losses and all(loss > 0 for loss in losses)
    (model,) = of_type(records[1], "artifact")
    assert (model.name, model.type) == ("backbone-run", "model")
    assert {e.path for e in model.manifest.contents} == {"backbone.pt", checkpoint.path_for(tmp_path / "run", 32).name}
    summary = {key(item): item.value_json for s in of_type(records[1], "summary") for item in s.update}
    assert "shards" in summary["inputs"]


@pytest.mark.slow
def test_dedup_stage_runs_as_a_job_with_its_own_flags(tmp_path):
    # --self and --against are flags of `wsl data dedup` with no config key of their name.
    raw = write_corpus(tmp_path / "raw", 12)
    build_shards(raw, tmp_path / "train", "shards.samples=4")
    build_shards(raw, tmp_path / "val", "shards.samples=4", "shards.name=val")
    done = wsl_launch(tmp_path, "--wandb", "off", "--job-dir", "job", "data", "dedup", "--", "--train",
                      str(tmp_path / "train"), "--against", f"val={tmp_path / 'val'}", "--out", str(tmp_path / "out"),
                      "--self", "workers=1", "progress=false")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["self"]["enabled"] and summary["against"][0]["name"] == "val"
    assert summary["removed"] == 12  # the same images on both sides: every training image matches


def test_wait_reads_every_array_task_from_scontrol_lines():
    from launch.polling import scontrol_ids
    assert scontrol_ids({"JobId": "7"}) == ["7"]
    assert scontrol_ids({"JobId": "8", "ArrayJobId": "8", "ArrayTaskId": "2"}) == ["8_2"]
    # Pending tasks share one line, with SLURM's range, list, step and %parallelism syntax.
    assert scontrol_ids({"ArrayJobId": "9", "ArrayTaskId": "0-2%4"}) == ["9_0", "9_1", "9_2"]
    assert scontrol_ids({"ArrayJobId": "9", "ArrayTaskId": "0,3,5-6"}) == ["9_0", "9_3", "9_5", "9_6"]
    assert scontrol_ids({"ArrayJobId": "9", "ArrayTaskId": "0-6:3"}) == ["9_0", "9_3", "9_6"]


@pytest.mark.slow
def test_the_stages_own_data_checks_run_before_submission(tmp_path, shard_dir):
    """What `wsl pretrain` / `wsl finetune` refuse at start is refused before a job is made,
    not in the queue (the device is not checked: the login node has no GPU)."""
    (tmp_path / "backbone.pt").write_bytes(b"")
    cases = {("pretrain", "--", f"data.train={shard_dir}", "run_dir=run", "train.loss=ce", "device=cuda"):
             "'train.loss' = ce needs single-label data",
             ("finetune", "--", f"backbone={tmp_path / 'backbone.pt'}", f"data.train={shard_dir}", "run_dir=run"):
             "fine-tuning needs single-label shards"}
    for options, message in cases.items():
        done = wsl_launch(tmp_path, *options)
        assert done.returncode == 2 and message in done.stderr, done.stderr
        assert not (tmp_path / "jobs").exists()
