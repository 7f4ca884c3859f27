"""A labelled split as its dataset's own files describe it, checked against the disk.

Each dataset module (imagenet, cub, places) reads its layout into a `Listing`: every
image's path relative to ROOT, its class id and extra sample metadata, plus the class ids
in label order. Whatever disagrees (a listed file missing, an image no label file names,
an id out of range, two label sources that differ) stops the conversion with one
`LayoutError` quoting the first offending lines: a label file is never silently trusted
over the disk, nor the disk over the label file.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, NamedTuple

from tqdm import tqdm

from data_tools.inputs.sources import IMAGE_SUFFIXES, Record

SHOWN = 5   # offending lines quoted in an error


class LayoutError(ValueError):
    """The tree does not hold the dataset as distributed; the message quotes where."""


def problem(summary: str, lines: list[str], total: int | None = None) -> LayoutError:
    total = len(lines) if total is None else total
    text = summary + "".join(f"\n  {line}" for line in lines[:SHOWN])
    if total > SHOWN:
        text += f"\n  ... and {total - SHOWN} more"
    return LayoutError(text)


class Item(NamedTuple):
    path: str                    # relative to the dataset root, '/'-separated
    cls: str                     # class id, one of Listing.classes
    extra: dict | None = None    # more sample json, e.g. CUB's bbox


@dataclass
class Listing:
    dataset: str
    split: str
    root: Path
    classes: list[str]           # class ids in label order
    lemmas: dict[str, str]       # class id -> readable name (vocabulary.tsv's lemma column)
    items: list[Item]
    published: tuple[int, int]   # (images, classes) of the complete split
    # Names of every image of the complete split, when they are known (val sets), so a
    # partial tree can say which files it lacks.
    published_names: Callable[[], Iterable[str]] | None = None


class LabelledSource:
    """A Listing as a `wsl data build` source: single-label records in a seeded order."""

    single_label = True

    def __init__(self, listing: Listing, seed: int = 0):
        self.listing, self.root = listing, listing.root
        self.classes = list(listing.classes)
        self.items = list(listing.items)
        # Distributed layouts are grouped by class; shuffling makes every shard mix classes.
        random.Random(seed).shuffle(self.items)

    def __iter__(self) -> Iterator[Record]:
        root = self.listing.root
        for index, item in enumerate(self.items):
            meta = {"path": item.path, **(item.extra or {})}
            yield Record(index, str(root / item.path), [item.cls], meta=meta)

    def lemma(self, cls: str) -> str:
        return self.listing.lemmas.get(cls, cls)

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for item in self.items:
            size = (self.listing.root / item.path).stat().st_size
            digest.update(f"{item.cls}\t{item.path}\t{size}\t{json.dumps(item.extra, sort_keys=True)}\n".encode())
        return digest.hexdigest()


def read_rows(path: Path, columns: tuple[Callable, ...], form: str) -> list[tuple[int, tuple]]:
    """Each non-blank line as (line number, its fields converted); every malformed line is reported.

    Line numbers, not texts, are kept (a train list has millions of lines); `quote` fetches
    the texts for an error.
    """
    rows, bad = [], []
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        for number, line in enumerate(f, 1):
            parts = line.strip().split(None, len(columns) - 1)
            if not parts:
                continue
            try:
                if len(parts) != len(columns):
                    raise ValueError
                rows.append((number, tuple(map(_apply, columns, parts))))
            except ValueError:
                bad.append(number)
    if bad:
        raise problem(f"{path}: {len(bad)} malformed line(s), expected '{form}':", quote(path, bad), len(bad))
    return rows


def _apply(convert: Callable, text: str):
    return convert(text)


def quote(path: Path, numbers: Iterable[int]) -> list[str]:
    """'file:line: text' for the first SHOWN of these line numbers."""
    wanted = sorted(numbers)[:SHOWN]
    found = {}
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if number in wanted:
                found[number] = f"{path.name}:{number}: {line.strip()}"
            if not wanted or number >= wanted[-1]:
                break
    return [found[n] for n in wanted if n in found]


def require_files(directory: Path, names: Iterable[str], dataset: str) -> None:
    missing = [name for name in names if not (directory / name).is_file()]
    if missing:
        raise LayoutError(f"{directory} is not a {dataset} root: {', '.join(missing)} not found")


def unique(rows: list[tuple[int, tuple]], path: Path, what: str, column: int = 0) -> dict:
    """Key (the fields[column]) -> (line number, fields); a repeated key is an error."""
    out, repeated = {}, []
    for number, fields in rows:
        key = fields[column]
        if key in out:
            repeated.append(number)
        else:
            out[key] = (number, fields)
    if repeated:
        raise problem(f"{path}: {len(repeated)} repeated {what}(s):", quote(path, repeated), len(repeated))
    return out


def image_files(directory: Path, progress: bool) -> set[str]:
    """Image files under `directory`, recursively, as '/'-separated paths relative to it."""
    found = set()
    walk = tqdm(os.walk(directory), desc=f"scan {directory.name}", unit="dir", disable=not progress, mininterval=1)
    for folder, dirs, files in walk:
        dirs.sort()
        base = Path(folder).relative_to(directory).as_posix()
        for name in files:
            if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                found.add(name if base == "." else f"{base}/{name}")
    return found


def match_disk(listed: list[str], on_disk: set[str], label_file: str, image_dir: Path) -> None:
    """Every listed file exists and every image on disk is listed, or one error naming both."""
    listed_set = set(listed)
    missing = [path for path in listed if path not in on_disk]
    unlisted = sorted(on_disk - listed_set)
    if missing or unlisted:
        lines = [f"missing: {image_dir / p}" for p in missing[:SHOWN]] + \
                [f"not listed: {image_dir / p}" for p in unlisted[:SHOWN]]
        raise problem(f"{label_file} disagrees with the images under {image_dir}: {len(missing)} listed "
                      f"file(s) missing, {len(unlisted)} image(s) it does not list:", lines, len(lines))


def completeness(listing: Listing) -> dict:
    """The split against its published counts; more than published is an error."""
    images, classes = listing.published
    used = {item.cls for item in listing.items}
    name = f"{listing.dataset} {listing.split}"
    if len(listing.classes) > classes:
        raise LayoutError(f"{name}: {len(listing.classes):,} classes, the published dataset has {classes:,}")
    if len(listing.items) > images:
        raise LayoutError(f"{name}: {len(listing.items):,} images, the published split has {images:,}; "
                          "the tree holds files that are not part of it")
    return {"dataset": listing.dataset, "split": listing.split,
            "images": len(listing.items), "published_images": images,
            "classes": len(used), "published_classes": classes,
            "complete": len(listing.items) == images and len(used) == classes}


def partial_message(listing: Listing, status: dict) -> str:
    missing = status["published_images"] - status["images"]
    text = (f"{listing.dataset} {listing.split} is partial: {status['images']:,} of "
            f"{status['published_images']:,} images ({missing:,} missing), images in "
            f"{status['classes']:,} of {status['published_classes']:,} classes")
    if listing.published_names is not None:
        have = {Path(item.path).name for item in listing.items}
        absent = [n for n in listing.published_names() if n not in have][:SHOWN]
        text += "; first missing: " + ", ".join(absent)
    empty = sorted(set(listing.classes) - {item.cls for item in listing.items})[:SHOWN]
    if empty:
        text += "; classes without images: " + ", ".join(empty)
    return text
