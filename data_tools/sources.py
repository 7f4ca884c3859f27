"""Read a user's inputs as one stream of records, in a fixed order.

Two inputs: a JSONL/TSV manifest of {path, tags} (hashtag data, multi-label), or an
ImageFolder tree (one class per folder, single-label). The order is the file order (or
the sorted folder order, shuffled by seed for an ImageFolder so a shard mixes classes),
so the record number is a stable key: re-runs and --part slices agree on it.
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm"}


@dataclass
class Record:
    index: int                      # position in the input stream; the sample key
    path: str = ""
    tags: list[str] = field(default_factory=list)
    error: str = ""                 # why the input line itself is unusable
    meta: dict | None = None        # the sample's json beside `labels`; None: its tags and path

    @property
    def key(self) -> str:
        return f"{self.index:012d}"

    def sample_meta(self) -> dict:
        return {"tags": self.tags, "path": self.path} if self.meta is None else self.meta


class ManifestSource:
    """Hashtag data. Like every source: iterable more than once (count pass, write pass)."""

    single_label = False

    def __init__(self, path: str, root: str | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"input manifest not found: {path}")
        self.root = Path(root) if root else self.path.parent
        self.tsv = self.path.suffix.lower() in (".tsv", ".txt", ".csv")

    def __iter__(self) -> Iterator[Record]:
        with open(self.path, "rb") as f:
            index = 0
            for raw in f:
                line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                if not line.strip() or line.startswith("#") and self.tsv:
                    continue
                record = self._parse_tsv(line, index) if self.tsv else self._parse_json(line, index)
                yield record
                index += 1

    def _resolve(self, path: str) -> str:
        return str(self.root / path) if not Path(path).is_absolute() else path

    def _parse_json(self, line: str, index: int) -> Record:
        try:
            item = json.loads(line.strip())
        except json.JSONDecodeError:
            return Record(index, error="malformed_line")
        if not isinstance(item, dict) or not isinstance(item.get("path"), str) or not item["path"]:
            return Record(index, error="malformed_line")
        tags = item.get("tags", [])
        if isinstance(tags, str):
            tags = tags.replace(",", " ").split()
        if not isinstance(tags, list):
            return Record(index, path=item["path"], error="malformed_line")
        return Record(index, self._resolve(item["path"]), [str(t) for t in tags])

    def _parse_tsv(self, line: str, index: int) -> Record:
        path, _, tags = line.partition("\t")
        if not path.strip():
            return Record(index, error="malformed_line")
        return Record(index, self._resolve(path.strip()), tags.replace(",", " ").split())

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        with open(self.path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()


class ImageFolderSource:
    """root/CLASS/IMAGE; the class names, sorted, are the labels (torchvision's order)."""

    single_label = True

    def __init__(self, root: str, seed: int = 0):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"input image folder not found: {root}")
        self.classes = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not self.classes:
            raise ValueError(f"input image folder {root} has no class sub-folders")
        self.files = [
            (str(path), cls)
            for cls in self.classes
            for path in sorted((self.root / cls).rglob("*"))
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
        ]
        random.Random(seed).shuffle(self.files)

    def __iter__(self) -> Iterator[Record]:
        for index, (path, cls) in enumerate(self.files):
            yield Record(index, path, [cls])

    def lemma(self, cls: str) -> str:
        return cls

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for path, cls in self.files:
            digest.update(f"{cls}\t{Path(path).relative_to(self.root)}\t{Path(path).stat().st_size}\n".encode())
        return digest.hexdigest()
