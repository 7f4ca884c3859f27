"""How `--against` / `--train` name a shard set: DIR, or NAME=DIR.

NAME= is read only when the text before the first `=` is a plain name (letters, digits,
`_`, `.`, `-`): a path holding `=` (`/x/run=3/val`) is taken whole, and `NAME=DIR` splits
at the first `=`, so DIR may hold more. A relative path whose first part holds `=` is
written `./run=3/val`.
"""
from __future__ import annotations

import re

PLAIN_NAME = re.compile(r"[A-Za-z0-9_.-]+")
RULE = ("NAME= is read only when NAME is a plain name (letters, digits, _ . -), so a path "
        "with = is taken whole (a relative one whose first part has =: ./run=3/val)")


def split_spec(spec: str) -> tuple[str, str]:
    """(NAME or "", DIR)."""
    name, sep, directory = spec.partition("=")
    if sep and PLAIN_NAME.fullmatch(name) and name not in (".", ".."):
        return name, directory
    return "", spec
