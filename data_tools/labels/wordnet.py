"""Hashtag → WordNet 3.0 noun synset, read from the WordNet database files.

Rules (also in docs/data.md):
- A tag and every noun lemma are *squashed* the same way: Unicode NFKD, accents dropped,
  case-folded, everything but letters and digits removed. So `#BrownBear`, `brown_bear`,
  `brown-bear` and `Brown Bear` are one key, and `#ursusarctos` reaches the same synset
  through its lemma `Ursus_arctos`.
- A key found in several synsets takes the most frequent sense: the lowest sense number
  in index.noun (WordNet orders senses by tagged frequency). Where no sense of the lemma
  has a frequency count (index.noun's tagsense_cnt is 0), that order says nothing, and
  WordNet often lists a person first: then the first sense that is a common noun wins
  over instances (proper names: an `@i` instance-hypernym pointer in data.noun), so
  `#sax` is the saxophone, not Adolphe Sax, and `#drake` the male duck, not Francis
  Drake. Between lemmas that squash to one key, the lemma with more tagged senses wins,
  then the alphabetically first lemma. `#bear` is the animal (n02131653), not the investor.
- A key not found is tried once more as a plural: noun.exc exceptions, then WordNet's
  own detachment suffixes (-s, -ses, -xes, -zes, -ches, -shes, -men, -ies).
- Anything else is not in WordNet and is dropped (the builder counts it).
"""
from __future__ import annotations

import os
import unicodedata
from functools import lru_cache
from pathlib import Path

SEARCH_DIRS = ("/usr/share/wordnet", "/usr/local/share/wordnet", "/usr/share/wordnet/dict")
PLURAL_SUFFIXES = (("s", ""), ("ses", "s"), ("xes", "x"), ("zes", "z"), ("ches", "ch"),
                   ("shes", "sh"), ("men", "man"), ("ies", "y"))


def squash(text: str) -> str:
    text = unicodedata.normalize("NFKD", text)
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    return "".join(ch for ch in text.casefold() if ch.isalnum())


def find_wordnet_dir(explicit: str | None = None) -> Path:
    candidates = [explicit] if explicit else [os.environ.get("WSL_WORDNET_DIR"), *SEARCH_DIRS]
    for path in filter(None, candidates):
        if (Path(path) / "index.noun").is_file() and (Path(path) / "data.noun").is_file():
            return Path(path)
    raise FileNotFoundError(
        "WordNet 3.0 database not found (looked for index.noun in "
        f"{', '.join(filter(None, candidates))}); install Debian's wordnet-base or set WSL_WORDNET_DIR")


def synset_id(offset: str | int) -> str:
    """ImageNet-style id: 'n' + 8-digit byte offset in data.noun (e.g. n02132136)."""
    return f"n{int(offset):08d}"


class WordNet:
    def __init__(self, directory: str | None = None):
        self.dir = find_wordnet_dir(directory)
        self.lemmas: dict[str, str] = {}     # synset id -> its first lemma, e.g. brown_bear
        self.instances: set[str] = set()     # synset ids of instances (proper names), e.g. Francis Drake
        self.keys: dict[str, str] = {}       # squashed key -> synset id
        self.exceptions: dict[str, str] = {}  # squashed irregular plural -> squashed singular
        self._read_data()
        self._read_index()
        self._read_exceptions()

    def _read_data(self) -> None:
        with open(self.dir / "data.noun", encoding="latin-1") as f:
            for line in f:
                if line.startswith("  "):  # licence header
                    continue
                parts = line.split(" ", 5)
                self.lemmas[synset_id(parts[0])] = parts[4]
                if " @i " in line.split(" | ", 1)[0]:  # pointers come before the gloss
                    self.instances.add(synset_id(parts[0]))

    def _read_index(self) -> None:
        best: dict[str, tuple] = {}
        with open(self.dir / "index.noun", encoding="latin-1") as f:
            for line in f:
                if line.startswith("  "):
                    continue
                parts = line.split()
                lemma, synset_cnt, ptr_cnt = parts[0], int(parts[2]), int(parts[3])
                tagsense_cnt = int(parts[5 + ptr_cnt])
                offsets = parts[6 + ptr_cnt: 6 + ptr_cnt + synset_cnt]
                key = squash(lemma)
                if not key:
                    continue
                rank = (-tagsense_cnt, lemma)  # each lemma offers its chosen sense, see module doc
                if key not in best or rank < best[key][0]:
                    best[key] = (rank, self._choose([synset_id(o) for o in offsets], tagsense_cnt))
        self.keys = {key: sid for key, (_, sid) in best.items()}

    def _choose(self, senses: list[str], tagsense_cnt: int) -> str:
        """Sense 1 when frequency counts put it first; else the first common noun."""
        if tagsense_cnt > 0:
            return senses[0]
        return next((sid for sid in senses if sid not in self.instances), senses[0])

    def _read_exceptions(self) -> None:
        path = self.dir / "noun.exc"
        if not path.is_file():
            return
        with open(path, encoding="latin-1") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2:
                    self.exceptions.setdefault(squash(parts[0]), squash(parts[1]))

    @lru_cache(maxsize=1 << 20)
    def lookup(self, tag: str) -> str | None:
        """The synset id of a raw hashtag, or None when WordNet has no noun for it."""
        key = squash(tag)
        if not key:
            return None
        if key in self.keys:
            return self.keys[key]
        if key in self.exceptions and self.exceptions[key] in self.keys:
            return self.keys[self.exceptions[key]]
        for suffix, replacement in PLURAL_SUFFIXES:
            if key.endswith(suffix) and len(key) > len(suffix):
                stem = key[: -len(suffix)] + replacement
                if stem in self.keys:
                    return self.keys[stem]
        return None

    def lemma(self, sid: str) -> str:
        return self.lemmas.get(sid, sid)

    def __contains__(self, sid: str) -> bool:
        return sid in self.lemmas
