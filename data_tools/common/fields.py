"""Config values with their allowed range declared once, beside the default.

    batch_size: int = bounded(64, lo=1)              # per rank
    min_scale: float = bounded(0.08, lo=0, hi=1, open_lo=True)

`check_ranges(obj)` walks a config dataclass (nested ones too) and raises one ValueError
that names the dotted key, the value and the range; data_tools.common.config calls it once for a
whole config, so no stage needs hand-written range checks.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Range:
    lo: float | None = None
    hi: float | None = None
    open_lo: bool = False
    open_hi: bool = False

    def holds(self, value) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return True  # the type check reports these, not the range check
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.lo is not None and (value <= self.lo if self.open_lo else value < self.lo):
            return False
        if self.hi is not None and (value >= self.hi if self.open_hi else value > self.hi):
            return False
        return True

    def __str__(self) -> str:
        lo = "-inf" if self.lo is None else _number(self.lo)
        hi = "inf" if self.hi is None else _number(self.hi)
        return f"{'(' if self.open_lo or self.lo is None else '['}{lo}, {hi}{')' if self.open_hi or self.hi is None else ']'}"


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def bounded(default: Any, lo: float | None = None, hi: float | None = None, *,
            open_lo: bool = False, open_hi: bool = False):
    """A dataclass field whose numeric value must lie in the range (None is always allowed)."""
    return dataclasses.field(default=default, metadata={"range": Range(lo, hi, open_lo, open_hi)})


def check_ranges(obj, prefix: str = "") -> None:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = prefix + f.name
        if dataclasses.is_dataclass(value):
            check_ranges(value, key + ".")
            continue
        rng = f.metadata.get("range")
        if rng is not None and value is not None and not rng.holds(value):
            raise ValueError(f"config key '{key}' = {value!r} is out of range: must be in {rng}")
