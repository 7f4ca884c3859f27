"""What a training stage's config says about the world (files, data, device), checked before
its run directory is made: each a one-line error instead of a traceback minutes in. `wsl
pretrain`/`finetune` run these, and `wsl launch` on the submitting machine (without the device)."""
from __future__ import annotations

from pathlib import Path

from data_tools.common import writable
from data_tools.common.config import ConfigError


def limit_threads(cfg) -> None:
    """The rank's thread budget, set before the checks load torch: OpenMP reads its wait
    policy only then (the run's first log line says the budget)."""
    from data_tools.common import threads
    threads.limit(cfg.threads, cfg.data.loader.worker_count())


def check_pretrain(cfg, device: bool = True) -> None:
    """The model, the run directory, the data and the loss; `device`: also that the device
    asked for is here (not on a login node submitting to SLURM)."""
    check_model_name(cfg.model.name)
    check_training(cfg, device)


def check_finetune(cfg, device: bool = True) -> None:
    """check_pretrain's checks for labelled data, which would otherwise fail only when the
    final evaluation reads data.val, after the whole run."""
    if cfg.model.name:  # "": the name the backbone file records
        check_model_name(cfg.model.name)
    if not Path(cfg.backbone).is_file():
        raise ConfigError(f"config key 'backbone': file not found: {cfg.backbone}")
    train = check_training(cfg, device)
    if train["label_type"] != "single":
        raise ConfigError(f"config key 'data.train': {cfg.data.train} holds multi-label data; fine-tuning needs "
                          "single-label shards (`wsl data build` from an ImageFolder, or `wsl data convert`)")


def check_model_name(name: str) -> None:
    from pretrain.architectures import MODELS
    if name not in MODELS:
        raise ConfigError(f"config key 'model.name' = {name!r} is not a model (known: {', '.join(MODELS)})")


def check_training(cfg, device: bool) -> dict:
    """The run directory, the data sets and the loss against each other, the device; the
    training set's manifest. The device goes last: checking it loads torch."""
    if Path(cfg.run_dir).exists() and not Path(cfg.run_dir).is_dir():
        raise ConfigError(f"config key 'run_dir' = {cfg.run_dir} is a file; give a directory")
    writable.check_folder(cfg.run_dir, "run_dir")
    train = read_shards("data.train", cfg.data.train)
    if cfg.data.val:
        val = read_shards("data.val", cfg.data.val)
        if (val["label_type"], val["num_classes"]) != (train["label_type"], train["num_classes"]):
            raise ConfigError(f"data.val has {val['num_classes']} {val['label_type']}-label classes, data.train "
                              f"{train['num_classes']} {train['label_type']}-label: build both with one vocabulary")
    wanted = {"softmax": "multi", "sigmoid": "multi", "ce": "single"}.get(cfg.train.loss, train["label_type"])
    if wanted != train["label_type"]:
        raise ConfigError(f"config key 'train.loss' = {cfg.train.loss} needs {wanted}-label data, but data.train "
                          f"is {train['label_type']}-label (train.loss=auto picks the right one)")
    if device:
        from data_tools.common import dist
        try:
            dist.pick_device(cfg.device, dist.read_env())
        except RuntimeError as err:  # no GPU for device=cuda, a half-set torchrun environment
            raise ConfigError(str(err)) from None
    return train


def read_shards(key: str, directory: str) -> dict:
    from data_tools.format import shards
    try:
        return shards.read_manifest(directory)
    except FileNotFoundError as err:
        raise ConfigError(f"config key '{key}': {err}") from None
