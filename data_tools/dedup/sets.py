"""How `--against` / `--train` name a shard set: DIR, or NAME=DIR.

NAME= is read only when the text before the first `=` is a plain name (letters, digits,
`_`, `.`, `-`): a path holding `=` (`/x/run=3/val`) is taken whole, and `NAME=DIR` splits
at the first `=`, so DIR may hold more. A relative path whose first part holds `=` is
written `./run=3/val`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from data_tools.format import shards

PLAIN_NAME = re.compile(r"[A-Za-z0-9_.-]+")
RULE = ("NAME= is read only when NAME is a plain name (letters, digits, _ . -), so a path "
        "with = is taken whole (a relative one whose first part has =: ./run=3/val)")


def split_spec(spec: str) -> tuple[str, str]:
    """(NAME or "", DIR)."""
    name, sep, directory = spec.partition("=")
    if sep and PLAIN_NAME.fullmatch(name) and name not in (".", ".."):
        return name, directory
    return "", spec


@dataclass
class ShardSet:
    name: str
    directory: Path
    manifest: dict


def open_set(spec: str, role: str) -> ShardSet:
    name, directory = split_spec(spec)
    path = Path(directory)
    if not path.is_dir():
        raise FileNotFoundError(f"{role} set {spec!r}: no such directory")
    manifest = shards.read_manifest(path)
    if manifest.get("num_samples", 0) == 0 or not manifest.get("shards"):
        raise ValueError(f"{role} set {spec!r} holds no samples")
    return ShardSet(name or path.resolve().name, path, manifest)
