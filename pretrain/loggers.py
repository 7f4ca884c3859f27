"""Metric loggers behind one interface: metrics.jsonl and Weights & Biases (the PNG curves
are drawn from metrics.jsonl: curves.py).

Only rank 0 logs. W&B is imported lazily and runs online with an API key, offline (files
under the run directory, `wandb sync` later) without one, or not at all when off.
"""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

from data_tools.common import atomic
from data_tools.common.log import say
from pretrain.curves import plot_curves


class JsonlLogger:
    def __init__(self, run_dir: Path, resume_at: int | None = None):
        self.path = Path(run_dir) / "metrics.jsonl"
        if resume_at is not None:
            drop_rows_after(self.path, resume_at)
        self.file = open(self.path, "a", buffering=1)  # line-buffered: a crash loses no line

    def log(self, metrics: dict) -> None:
        self.file.write(json.dumps(metrics) + "\n")

    def close(self) -> None:
        self.file.close()
        plot_curves(self.path, self.path.with_name("curves.png"))


def drop_rows_after(path: Path, images_seen: int) -> None:
    """Forget rows logged after the checkpoint a run resumes from: the resumed run logs
    those steps again, and curves would loop back."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = [line for line in lines if line.strip() and json.loads(line).get("images_seen", 0) <= images_seen]
    if len(kept) != len(lines):
        with atomic.replacing(path) as f:
            f.write("".join(kept))


class WandbLogger:
    def __init__(self, run_dir: Path, config: dict, project: str, mode: str, name: str | None):
        import wandb
        if mode == "auto":
            mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
        if mode == "offline":
            keep_offline(Path(run_dir) / "wandb")
        id_file = Path(run_dir) / "wandb_id.txt"
        run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:12]
        id_file.write_text(run_id)
        # The same id on resume continues one W&B run instead of starting a new one.
        self.run = wandb.init(project=project, name=name, id=run_id, resume="allow", mode=mode,
                              dir=str(run_dir), config=config, settings=wandb.Settings(silent=True))
        self.wandb, self.mode, self.run_dir, self.run_id = wandb, mode, Path(run_dir), run_id

    def sync_command(self) -> str:
        """Every offline session of this run (a fine-tuning's final evaluation and each
        resume add one)."""
        return f"wandb sync {self.run_dir / 'wandb'}/offline-run-*-{self.run_id}"

    def log(self, metrics: dict) -> None:
        self.run.log(metrics, step=int(metrics["images_seen"]))

    def log_images(self, images, captions: list[str]) -> None:
        self.run.log({"samples": [self.wandb.Image(img, caption=c) for img, c in zip(images, captions)]})

    def close(self) -> None:
        self.run.finish()
        if self.mode == "offline" and self.run_id not in HINTED:
            HINTED.add(self.run_id)
            say(f"W&B run {self.run_id} is offline (no WANDB_API_KEY); upload it with: {self.sync_command()}")


HINTED: set[str] = set()   # runs whose `wandb sync` command this process has printed
WANDB_FOLDERS = (("WANDB_CACHE_DIR", "cache"), ("WANDB_CONFIG_DIR", "config"), ("WANDB_DATA_DIR", "data"))
# The user's own choices, read before any run of this process set them (`wsl demo` runs
# every stage in one process: each run's folders are its own, not the first run's).
USER_SET = {name for name, _ in WANDB_FOLDERS if name in os.environ}


def keep_offline(folder: Path) -> None:
    """An offline run neither reaches the network nor writes outside its run directory:
    W&B's error reporting looks its server up even offline, and its service logs, cache
    and settings go under the home folder unless told otherwise (a user's own choice of
    those folders stands)."""
    os.environ["WANDB_ERROR_REPORTING"] = "false"
    for name, sub in WANDB_FOLDERS:
        if name not in USER_SET:
            os.environ[name] = str((folder / sub).resolve())


class Loggers:
    """Fan-out to every enabled logger; a no-op on ranks other than 0."""

    def __init__(self, loggers: list):
        self.loggers = loggers

    def log(self, metrics: dict) -> None:
        for logger in self.loggers:
            logger.log(metrics)

    def log_images(self, images, captions: list[str]) -> None:
        for logger in self.loggers:
            if hasattr(logger, "log_images"):  # only W&B shows images
                logger.log_images(images, captions)

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()


def make_loggers(run_dir: Path, is_main: bool, config: dict, wandb_mode: str, project: str,
                 name: str | None, resume_at: int | None = None) -> Loggers:
    """`resume_at`: a training run's images seen at the checkpoint it starts from (0: a
    fresh run), whose later rows are dropped; None (an evaluation): rows are only added."""
    if not is_main:
        return Loggers([])
    loggers = [JsonlLogger(run_dir, resume_at)]
    if wandb_mode != "off":
        loggers.append(WandbLogger(run_dir, config, project, wandb_mode, name))
    return Loggers(loggers)


def sample_images(shard_dir: str, count: int) -> tuple[list, list[str]]:
    """The first `count` images of the first shard with their raw tags (a converted,
    single-label set has none: its class names), for a look in W&B, as 224-pixel squares
    (W&B shows a list of images of one size only)."""
    import io

    from PIL import Image, ImageOps

    from data_tools.format import shards
    manifest = shards.read_manifest(shard_dir)
    names = [entry.lemma for entry in shards.read_vocabulary(shard_dir, manifest)]
    images, captions = [], []
    for _, files in shards.iter_samples(Path(shard_dir) / manifest["shards"][0]["file"]):
        if len(images) >= count:
            break
        image = Image.open(io.BytesIO(files["jpg"])).convert("RGB")
        images.append(ImageOps.fit(image, (224, 224)))
        meta = json.loads(files["json"])
        captions.append(" ".join(meta["tags"]) if "tags" in meta else ", ".join(names[i] for i in meta["labels"]))
    return images, captions
