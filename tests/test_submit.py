"""`wsl launch` without SLURM (launch/submit.py): local jobs (real processes through
submitit), option checks, and the checks a stage makes before anything is submitted."""
from __future__ import annotations

import json
import os
import re
from datetime import datetime
from pathlib import Path

import pytest
from helpers import REPO, build_args, build_shards, write_corpus, wsl_launch


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
