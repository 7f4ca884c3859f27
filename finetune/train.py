"""`wsl finetune`: a backbone, a fresh head, then either pretrain's loop on labelled shards
(finetune.mode=full) or a linear probe on frozen features (mode=linear, finetune.linprobe).

Full fine-tuning is pretrain.train.run with two seams: `init_model` builds the model from
the backbone file, and `trunk_lr_mult` gives the trunk a smaller LR than the new head.
Everything else (DDP, bf16, warm-up and schedule, exact resume, checkpoints, W&B) is the
pretraining code, unchanged. At the end rank 0 evaluates the final model on data.val in
full (top-1/5, mean per-class, confusions) into results.json.
"""
from __future__ import annotations

from pathlib import Path

from data_tools.common import dist
from finetune import leak
from finetune.config import FinetuneConfig
from finetune.evaluate import load_model, run_eval
from finetune.linprobe import run_linear
from finetune.run_dir import check_run_dir
from pretrain import backbone, checkpoint
from pretrain import train as pretrain_train


def run(cfg: FinetuneConfig, config_dict: dict) -> dict | None:
    if cfg.mode == "linear":
        return run_linear(cfg, config_dict)
    source = backbone.read(cfg.backbone)
    cfg.model.name = config_dict["model"]["name"] = backbone.resolve_name(source, cfg.model.name)
    check_run_dir(cfg, config_dict)
    backbone.check_fits(source, cfg.model.name)
    is_main = dist.read_env().is_main
    # Once every rank has joined: rank 0 reads the records, and an error there stops every
    # rank (before the group formed, the others waited for rank 0 in dist.init).
    leak_check = lambda: dist.on_main(leak.check, source, [cfg.data.val] if cfg.data.val else [])  # noqa: E731
    progress = pretrain_train.run(cfg, config_dict, init_model=lambda k: backbone.build(source, cfg.model.name, k),
                                  trunk_lr_mult=cfg.trunk_lr_mult, on_start=leak_check)
    final = checkpoint.path_for(Path(cfg.run_dir), progress.images_seen)
    if is_main and cfg.data.val and progress.images_seen >= cfg.train.total_images and final.is_file():
        model, config, seen = load_model(final)
        return run_eval(model, cfg, config, seen, final, cfg.data.val, cfg.run_dir, Path(cfg.run_dir) / "results.json")
    return None
