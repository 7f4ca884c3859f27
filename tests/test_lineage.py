"""launch/lineage.py: a launched pipeline joins one W&B group with artifact lineage, read back
from the offline files."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers import REPO, build_args, write_corpus, wsl_launch

from pretrain import checkpoint

TINY = ["device=cpu", "model.name=resnext_tiny", "train.bottleneck_seconds=0", "data.loader.batch_size=8",
        "data.loader.image_size=32", "data.loader.resize_size=36", "data.loader.workers=1",
        "data.loader.backend=pil", "optim.warmup_images=16", "log.every_steps=1", "log.sample_images=0"]


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
