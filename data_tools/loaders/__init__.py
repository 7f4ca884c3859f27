"""Batches from a `wsl data build` shard directory for any rank, device and phase.

`make_loader` (loader.py) is the entry; plan.py fixes which samples each rank reads,
catalog.py and remote.py find them in local or remote shards, transforms.py, workers.py
and dali.py decode them. This package only re-exports the public names.
"""
from data_tools.loader_config import LoaderConfig
from data_tools.loaders.loader import PHASES, Batch, Loader, dali_available, make_loader, resolve_backend

__all__ = ["PHASES", "Batch", "Loader", "LoaderConfig", "dali_available", "make_loader", "resolve_backend"]
