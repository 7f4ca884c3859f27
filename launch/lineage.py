"""W&B lineage: one group per pipeline, one job_type per stage, artifacts linking data to models.

Every stage of a pipeline (build -> dedup -> pretrain -> finetune) joins the group given to
`wsl launch --group` (default: the name of the shard folder the stage reads or writes). The
training stages' own W&B run gets the group and job type from W&B's environment variables
(WANDB_RUN_GROUP, WANDB_JOB_TYPE), set by the job before the stage starts. When a stage
succeeds, rank 0 records in that same run (the id is kept in the run folder, so requeues and
this step continue one run):
  - shard folders it read, as `dataset` reference artifacts (the manifest's checksum, no upload),
    used as inputs (W&B refuses inputs offline: then they are named in the run's summary);
  - what it wrote: a dataset manifest as a reference artifact, or a backbone as a `model`
    artifact (the file, plus the newest checkpoint by reference).
Offline (no WANDB_API_KEY) the run stays on disk and the `wandb sync` command is printed.
"""
from __future__ import annotations

import os
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ID_FILE = "wandb_id.txt"   # the name pretrain.loggers.WandbLogger keeps its run id under


@dataclass
class Lineage:
    project: str
    group: str
    job_type: str
    mode: str                       # auto | online | offline | off
    run_dir: Path                   # holds the run id and the W&B files
    output: Path                    # the file the stage produced
    kind: str                       # "dataset" or "model"
    inputs: list[Path] = field(default_factory=list)   # manifests of the shard folders read

    def environ(self) -> dict[str, str]:
        """What makes a stage's own W&B run join the pipeline's group with its job type."""
        return {"WANDB_RUN_GROUP": self.group, "WANDB_JOB_TYPE": self.job_type}

    def resolved_mode(self) -> str:
        if self.mode == "auto":
            return "online" if os.environ.get("WANDB_API_KEY") else "offline"
        return self.mode

    def record(self) -> str:
        """Log the stage's inputs and output; returns a line saying where they are."""
        import wandb
        mode = self.resolved_mode()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if mode == "offline":
            from pretrain.loggers import keep_offline
            keep_offline(self.run_dir / "wandb")
        run = wandb.init(project=self.project, group=self.group, job_type=self.job_type, id=run_id(self.run_dir),
                         resume="allow", mode=mode, dir=str(self.run_dir), settings=wandb.Settings(silent=True))
        inputs = [dataset_artifact(path) for path in self.inputs]
        for artifact in inputs:
            if mode == "online":
                run.use_artifact(artifact)
        if inputs:
            run.summary["inputs"] = [f"{a.name} ({path})" for a, path in zip(inputs, self.inputs)]
        run.log_artifact(dataset_artifact(self.output) if self.kind == "dataset" else model_artifact(self.output))
        url = run.url if mode == "online" else None
        run.finish()
        if mode == "offline":
            return f"W&B offline; to upload: wandb sync {self.run_dir / 'wandb'}/offline-run-*"
        return f"W&B: {url}"


def run_id(run_dir: Path) -> str:
    """The run's id, kept in the run folder: every requeue and step continues one W&B run."""
    path = run_dir / ID_FILE
    if path.is_file():
        return path.read_text().strip()
    new = uuid.uuid4().hex[:12]
    path.write_text(new)
    return new


def artifact_name(path: Path) -> str:
    return re.sub(r"[^\w.-]", "-", path.parent.name)


def dataset_artifact(manifest: Path):
    import wandb
    artifact = wandb.Artifact(artifact_name(manifest), type="dataset", metadata={"path": str(manifest.parent)})
    artifact.add_reference(manifest.resolve().as_uri(), name=manifest.name)
    return artifact


def model_artifact(backbone: Path):
    import wandb

    from pretrain import checkpoint
    artifact = wandb.Artifact(f"backbone-{artifact_name(backbone)}", type="model")
    artifact.add_file(str(backbone), name=backbone.name)
    latest = checkpoint.latest(backbone.parent)
    if latest is not None:  # large: recorded by checksum, not uploaded
        artifact.add_reference(latest.resolve().as_uri(), name=latest.name)
    return artifact
