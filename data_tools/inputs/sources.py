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
    line: int = 0                   # line number in a manifest (1-based), for messages
    detail: str = ""                # what is wrong with that line, in words

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
            for number, raw in enumerate(f, start=1):
                line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                if number == 1:
                    line = line.removeprefix("\ufeff")  # a BOM some editors write
                if not line.strip() or line.startswith("#") and self.tsv:
                    continue
                record = self._parse_tsv(line, index) if self.tsv else self._parse_json(line, index)
                record.line = number
                yield record
                index += 1

    def _resolve(self, path: str) -> str:
        return str(self.root / path) if not Path(path).is_absolute() else path

    def _parse_json(self, line: str, index: int) -> Record:
        try:
            item = json.loads(line.strip())
        except json.JSONDecodeError as err:
            return malformed(index, f"not JSON ({err.msg}): {shorten(line)}")
        if not isinstance(item, dict):
            return malformed(index, f"a JSON {type(item).__name__}, not an object: {shorten(line)}")
        path, tags = item.get("path"), item.get("tags", [])
        if "path" not in item:
            return malformed(index, f"no 'path' field (fields: {', '.join(map(str, item))[:80] or 'none'})")
        if not isinstance(path, str) or not path:
            return malformed(index, f"'path' is {path!r}, not a file path")
        if isinstance(tags, str):
            tags = tags.replace(",", " ").split()
        if not isinstance(tags, list):
            return malformed(index, f"'tags' is {json.dumps(tags)[:80]}, not a list or a string")
        return Record(index, self._resolve(path), [str(t) for t in tags])

    def _parse_tsv(self, line: str, index: int) -> Record:
        path, _, tags = line.partition("\t")
        if not path.strip():
            return malformed(index, f"no path before the tab: {shorten(line)}")
        return Record(index, self._resolve(path.strip()), tags.replace(",", " ").split())

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        with open(self.path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()


def malformed(index: int, detail: str) -> Record:
    return Record(index, error="malformed_line", detail=detail)


def shorten(text: str, limit: int = 60) -> str:
    """The line as Python would quote it (tabs and control bytes visible), cut to `limit`."""
    quoted = repr(text)
    return quoted if len(quoted) <= limit else quoted[:limit] + "..."


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
