"""Backbone files: our backbone.pt (written here, `export`) and the backbones fine-tuning
and dedup read: a backbone.pt, any pretrain checkpoint, or a torchvision / timm /
WSL-Images ResNe(X)t state-dict file (all share torchvision's parameter names).

Nothing is downloaded: a backbone is a local file. Every trunk key must match (names and
shapes) or the load stops with one line listing what is missing and what is unexpected;
the source's classifier is dropped and a fresh head of the target's classes is made.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from data_tools.common import atomic
from pretrain import checkpoint
from pretrain.models import MODELS, ResNeXt, build_model

HEAD = "fc."
SHOWN = 8   # keys named per kind of mismatch; the rest are counted


@dataclass
class Source:
    path: Path
    model: str | None         # architecture recorded in the file, if any
    state_dict: dict          # trunk weights only
    pretrain_config: dict | None   # the pretraining run's config (our files only)


def export(state_dict: dict, name: str, config: dict, path: Path) -> Path:
    """The backbone for fine-tuning: every weight but the classifier."""
    trunk = {k: v for k, v in state_dict.items() if not k.startswith(HEAD)}
    with atomic.replacing(path, "wb") as f:
        torch.save({"model": name, "state_dict": trunk, "config": config}, f)
    return path


def read(path: str | Path) -> Source:
    """Read a backbone file of any supported kind; the classifier is dropped here."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone file not found: {path}")
    blob = checkpoint.load_weights(path, "backbone")
    if not isinstance(blob, dict):
        raise ValueError(f"backbone {path} holds a {type(blob).__name__}, not a state dict")
    name, config = None, None
    if isinstance(blob.get("model"), str):                   # our backbone.pt
        name, config, weights = blob["model"], blob.get("config"), blob["state_dict"]
    elif isinstance(blob.get("model"), dict) and "config" in blob:   # a pretrain/finetune checkpoint
        config, weights = blob["config"], blob["model"]
        name = config.get("model", {}).get("name")
    elif isinstance(blob.get("state_dict"), dict):           # timm/Lightning-style wrapper
        weights = blob["state_dict"]
    elif isinstance(blob.get("model"), dict):                # MAE / DeiT / DINO-style wrapper
        weights = blob["model"]
    else:                                                     # torchvision / WSL-Images: the bare state dict
        weights = blob
    if not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise ValueError(f"backbone {path} is not a state dict of tensors")
    # DDP and torch.compile prefixes, as written by other trainers
    weights = {_strip(k): v for k, v in weights.items()}
    trunk = {k: v for k, v in weights.items() if not k.startswith(HEAD)}
    return Source(path, name or None, trunk, config)


def _strip(key: str) -> str:
    for prefix in ("module.", "_orig_mod."):
        if key.startswith(prefix):
            key = key[len(prefix):]
    return key


def resolve_name(source: Source, requested: str) -> str:
    """The architecture: the file's record, or `model.name` for files that record none."""
    if source.model and requested and requested != source.model:
        raise ValueError(f"'model.name' is {requested} but backbone {source.path} is a {source.model}")
    name = source.model or requested
    if not name:
        raise ValueError(f"backbone {source.path} does not record its architecture: set 'model.name' "
                         f"(one of {', '.join(MODELS)})")
    if name not in MODELS:
        raise ValueError(f"unknown model '{name}' (known: {', '.join(MODELS)})")
    return name


def build(source: Source, name: str, num_classes: int) -> ResNeXt:
    """`name` with the source's trunk weights and a fresh `num_classes` head."""
    check_fits(source, name)
    model = build_model(name, num_classes, zero_init_residual=False)
    model.load_state_dict(source.state_dict, strict=False)
    return model


def check_fits(source: Source, name: str) -> None:
    """One error listing the keys when the trunk does not fit `name`; checked on a model
    laid out on the meta device, so it costs no memory and no random draws, and can run
    before any other start-up message."""
    with torch.device("meta"):
        model = build_model(name, 0, zero_init_residual=False)
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith(HEAD)}
    missing = sorted(set(expected) - set(source.state_dict))
    unexpected = sorted(set(source.state_dict) - set(expected))
    shapes = sorted(f"{k} {tuple(source.state_dict[k].shape)} vs {tuple(v.shape)}"
                    for k, v in expected.items() if k in source.state_dict and source.state_dict[k].shape != v.shape)
    if missing or unexpected or shapes:
        raise ValueError(f"backbone {source.path} does not fit {name}: "
                         + "; ".join(_listing(kind, keys) for kind, keys in
                                     (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)) if keys))


def _listing(kind: str, keys: list[str]) -> str:
    more = f", ... {len(keys) - SHOWN} more" if len(keys) > SHOWN else ""
    return f"{len(keys)} {kind} key(s) ({', '.join(keys[:SHOWN])}{more})"


def feature_network(path: str | Path, arch: str | None = None) -> torch.nn.Module:
    """The trunk of a backbone file up to its last feature map (no pooling, no classifier),
    as `wsl data dedup`'s learned descriptor reads it: a file that records its architecture
    builds that; a plain state dict needs `arch`, the name of a torchvision model."""
    source = read(path)
    if source.model:
        net = build(source, source.model, 0)
    elif not arch:
        raise ValueError(f"{path} is a plain state dict: set 'descriptor.arch' to its torchvision "
                         "model (e.g. resnet50)")
    else:
        net = torchvision_model(source, arch)
    return torch.nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool,
                               *(getattr(net, f"layer{i}") for i in range(1, 5)))


def torchvision_model(source: Source, arch: str) -> torch.nn.Module:
    """torchvision's `arch` with the source's trunk weights."""
    import torchvision
    if not hasattr(torchvision.models, arch):
        raise ValueError(f"'descriptor.arch' = {arch!r} is not a torchvision model")
    net = getattr(torchvision.models, arch)(weights=None)
    try:
        missing, unexpected = net.load_state_dict(source.state_dict, strict=False)
    except RuntimeError as err:  # shapes differ
        detail = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line), str(err))
        raise ValueError(f"{source.path} does not fit torchvision's {arch}: {detail}") from None
    missing = [k for k in missing if not k.startswith(HEAD)]
    if missing or unexpected:
        raise ValueError(f"{source.path} does not fit torchvision's {arch}: {len(missing)} missing, "
                         f"{len(unexpected)} unexpected weights (e.g. {(missing + unexpected)[0]})")
    return net
