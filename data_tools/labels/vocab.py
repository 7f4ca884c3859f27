"""The label vocabulary: which synsets (or classes) become output units, in which order.

vocabulary.tsv has a header and one row per label: index, synset id, lemma, image count.
The index is the position of the unit in the classifier and the value in each sample's
json `labels`.
"""
from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from data_tools.common import atomic

HEADER = ("index", "synset", "lemma", "count")


@dataclass(frozen=True)
class Entry:
    synset: str
    lemma: str
    count: int


def select(counts: Counter, top_k: int, min_count: int = 1, restrict: set[str] | None = None) -> list[str]:
    """Top-K synsets by image count; ties broken by synset id so the choice is stable."""
    eligible = [(sid, n) for sid, n in counts.items()
                if n >= min_count and (restrict is None or sid in restrict)]
    eligible.sort(key=lambda item: (-item[1], item[0]))
    return [sid for sid, _ in eligible[:top_k]]


def read_synset_list(path: str) -> set[str]:
    """One synset id per line (first column); blank lines and '#' comments ignored."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"synset list not found: {path}")
    ids = set()
    for line in Path(path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            ids.add(line.split()[0])
    if not ids:
        raise ValueError(f"synset list {path} is empty")
    return ids


def write(path: Path, entries: list[Entry]) -> None:
    with atomic.replacing(path, newline="") as f:
        out = csv.writer(f, delimiter="\t", lineterminator="\n")
        out.writerow(HEADER)
        for index, entry in enumerate(entries):
            out.writerow((index, entry.synset, entry.lemma, entry.count))


def read(path: str | Path) -> list[Entry]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"vocabulary not found: {path}")
    with open(path, newline="") as f:
        return parse(f.read(), path)


def parse(text: str, path) -> list[Entry]:
    """The entries of a vocabulary.tsv's text; `path` names it in errors."""
    rows = list(csv.reader(text.splitlines(), delimiter="\t"))
    if not rows or tuple(rows[0]) != HEADER:
        raise ValueError(f"{path} is not a vocabulary.tsv (header must be {' '.join(HEADER)})")
    entries = []
    for line_no, row in enumerate(rows[1:], start=2):
        if len(row) != 4 or row[0] != str(line_no - 2):
            raise ValueError(f"{path}:{line_no}: expected '{line_no - 2}<TAB>synset<TAB>lemma<TAB>count'")
        entries.append(Entry(row[1], row[2], int(row[3])))
    return entries
