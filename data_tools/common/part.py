"""`--part i/N`: this task builds or scans every N-th item from item i (a SLURM array task)."""
from __future__ import annotations


def parse_part(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"'part' must look like i/N (e.g. 3/16), got {text!r}") from None
    if not 0 <= i < n:
        raise ValueError(f"'part' {text}: need 0 <= i < N")
    return i, n
