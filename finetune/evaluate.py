"""`wsl finetune eval CHECKPOINT SHARDS`: top-1, top-5, mean per-class accuracy and the most
confused class pairs of a fine-tuned model or a linear probe, to evals/SET.json beside the
checkpoint (a full fine-tuning's final evaluation: its results.json), the console and W&B
(the training run's, continued).
"""
from __future__ import annotations

import dataclasses
import hashlib
import re
from pathlib import Path

import torch
from torch import nn

from data_tools.common.config import upgrade
from data_tools.common.log import say
from data_tools.format import shards
from data_tools.loaders import LoaderConfig, make_loader
from finetune.config import FinetuneConfig
from pretrain import checkpoint
from pretrain.evaluate import collect, loader_config
from pretrain.loggers import make_loggers
from pretrain.metrics import mean_per_class_accuracy, most_confused, topk_accuracy
from pretrain.models import build_model

CONFUSED = 10   # class pairs reported


class Probe(nn.Module):
    """A ResNeXt read at `stages` (None: res5, 3: res4) through its `fc`: a fine-tuned model
    and a linear probe on any stage evaluate alike."""

    def __init__(self, model: nn.Module, stages: int | None = None):
        super().__init__()
        self.model, self.stages = model, stages

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.fc(self.model.forward_features(x, self.stages))


def probe_stages(config: dict) -> int | None:
    linear_res4 = config.get("mode") == "linear" and config.get("probe", {}).get("features") == "res4"
    return 3 if linear_res4 else None


def load_model(path: str | Path) -> tuple[Probe, dict, int]:
    """(model, its run's config, images seen) from a fine-tuning checkpoint or probe.pt."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    state = checkpoint.load(path)
    if not isinstance(state.get("config"), dict) or "backbone" not in state["config"]:
        raise ValueError(f"{path} is not a `wsl finetune` checkpoint or probe.pt (no fine-tuning config inside)")
    config = upgrade(FinetuneConfig, state["config"])   # written before a key was renamed: loads as it is now
    weights = state["model"]
    num_classes, width = weights["fc.weight"].shape
    model = build_model(config["model"]["name"], num_classes)
    model.fc = nn.Linear(width, num_classes)   # a res4 probe's head is narrower than res5's
    model.load_state_dict(weights)
    return Probe(model, probe_stages(config)), config, state.get("progress", {}).get("images_seen", 0)


def class_names(shard_dir: str | Path) -> list[str]:
    manifest = shards.read_manifest(shard_dir)
    entries = shards.read_vocabulary(shard_dir, manifest)
    return [e.synset if e.lemma == e.synset else f"{e.synset} ({e.lemma})" for e in entries]


def summarize(scores: torch.Tensor, targets: torch.Tensor, names: list[str]) -> dict:
    k = len(names)
    top = topk_accuracy(scores, targets, ks=(1, min(5, k)))
    pairs = most_confused(scores, targets, k, CONFUSED)
    return {"num_samples": len(targets), "top1": top[1], "top5": top[min(5, k)],
            "mean_per_class": mean_per_class_accuracy(scores, targets, k),
            "confused": [{**p, "true": names[p["true"]], "predicted": names[p["predicted"]]} for p in pairs]}


@torch.no_grad()
def evaluate(model: nn.Module, shard_dir: str | Path, loader_cfg: LoaderConfig, device: torch.device,
             bf16: bool) -> dict:
    """Every sample of `shard_dir` scored once (one process), summarised."""
    manifest = shards.read_manifest(shard_dir)
    if manifest["label_type"] != "single":
        raise ValueError(f"{shard_dir} holds {manifest['label_type']}-label data; evaluation needs single-label shards")
    names = class_names(shard_dir)
    cfg = dataclasses.replace(loader_cfg, sqrt_resample=False, drop_last=False)
    loader = make_loader(cfg, shard_dir, 0, 1, device, "eval")
    model = model.to(device)
    table = collect(model, loader, device, bf16)
    scores, targets = table["scores"], table["labels"]
    if scores.shape[1] != len(names):
        raise ValueError(f"the model has {scores.shape[1]} classes but {shard_dir} has {len(names)}")
    return summarize(scores, targets, names)


def report(results: dict) -> str:
    lines = [f"{results['shards']}: {results['num_samples']} images  top-1 {100 * results['top1']:.2f} %  "
             f"top-5 {100 * results['top5']:.2f} %  mean per-class {100 * results['mean_per_class']:.2f} %"]
    if results["confused"]:
        lines.append("most confused (true -> predicted: errors, share of the true class):")
        lines += [f"  {p['true']} -> {p['predicted']}: {p['errors']} ({100 * p['share']:.1f} %)"
                  for p in results["confused"]]
    return "\n".join(lines)


def eval_record_path(run_dir: Path, shard_dir: str | Path, manifest: dict, overrides: list[str]) -> Path:
    """RUN_DIR/evals/NAME-FINGERPRINT[-OVERRIDES].json: one file per evaluated set (its
    folder's name and content) and per set of overrides, so evaluations never replace each
    other nor the run's own results.json."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", str(shard_dir).rstrip("/").rsplit("/", 1)[-1]) or "shards"
    tag = f"{name}-{shards.fingerprint(manifest)[:12]}"
    if overrides:
        tag += "-" + hashlib.sha256(" ".join(overrides).encode()).hexdigest()[:8]
    return Path(run_dir) / "evals" / f"{tag}.json"


def run_eval(model: nn.Module, cfg, config: dict, images_seen: int, checkpoint_path: str | Path,
             shard_dir: str | Path, run_dir: str | Path, record: Path, overrides: list[str] = ()) -> dict:
    """Score `model` (from `load_model`) on `shard_dir` under `cfg` (a FinetuneConfig: its
    loader, bf16, W&B settings), written to `record`, and logged to the run in `run_dir`."""
    device = torch.device("cuda" if torch.cuda.is_available() and cfg.device != "cpu" else "cpu")
    loader_cfg = loader_config(cfg)
    results = {"checkpoint": str(checkpoint_path), "shards": str(shard_dir), "overrides": list(overrides),
               "image_size": loader_cfg.image_size, "resize_size": loader_cfg.resize_size,
               **evaluate(model, shard_dir, loader_cfg, device, cfg.train.bf16 and device.type == "cuda")}
    record.parent.mkdir(parents=True, exist_ok=True)
    shards.write_json(record, results)
    print(report(results))
    say(f"results: {record}")
    loggers = make_loggers(Path(run_dir), True, config, cfg.log.wandb, cfg.log.project, cfg.log.name)
    loggers.log({"images_seen": images_seen, **{f"eval/{k}": results[k] for k in ("top1", "top5", "mean_per_class")}})
    loggers.close()
    return results
