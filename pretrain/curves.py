"""The run's curves from its metrics.jsonl: curves.png (training row, validation row) and
the final validation line of the console."""
from __future__ import annotations

import json
from pathlib import Path

# Panel titles in words, with units, and the factor from the logged value to that unit.
TRAINING = {"loss": ("training loss", 1), "lr": ("learning rate", 1), "img_per_s": ("throughput, images/s", 1),
            "data_wait": ("waiting for data, % of the time", 100)}
VALIDATION = {"val/mAP": ("held-out mAP, %", 100), "val/precision@1": ("held-out precision@1, %", 100),
              "val/top1": ("validation top-1, %", 100), "eval/top1": ("final evaluation top-1, %", 100)}


def read_rows(jsonl: Path) -> list[dict]:
    return [json.loads(line) for line in open(jsonl) if line.strip()]


def validation_summary(jsonl: Path) -> str:
    """The last validation figures in metrics.jsonl in words ("" when there are none)."""
    rows = [r for r in read_rows(jsonl) if any(k in r for k in VALIDATION)] if Path(jsonl).is_file() else []
    if not rows:
        return ""
    last = rows[-1]
    return ", ".join(f"{VALIDATION[k][0].replace(', %', '')} {VALIDATION[k][1] * last[k]:.1f} %"
                     for k in VALIDATION if k in last)


def plot_curves(jsonl: Path, png: Path) -> list[str]:
    """Training metrics on the top row, validation metrics (as logged) below, against
    images seen; the panels' titles."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_rows(jsonl)
    panels = [[(key, rows_with(rows, key)) for key in keys if rows_with(rows, key)] for keys in (TRAINING, VALIDATION)]
    panels = [row for row in panels if row]
    if not panels:
        return []
    titles = {**TRAINING, **VALIDATION}
    width = max(len(row) for row in panels)
    last_seen = max(r["images_seen"] for row in panels for _, found in row for r in found) or 1
    fig, axes = plt.subplots(len(panels), width, figsize=(4 * width, 3 * len(panels)), dpi=100, squeeze=False)
    for row_axes, row in zip(axes, panels):
        for ax, (key, found) in zip(row_axes, row):
            title, scale = titles[key]
            ax.plot([r["images_seen"] for r in found], [scale * r[key] for r in found],
                    marker="o" if key in VALIDATION else None, markersize=4)
            ax.set_xlim(0, 1.02 * last_seen)   # validation points line up with training below them
            ax.set_xlabel("images seen")
            ax.set_title(title)
            ax.grid(alpha=0.3)
        for ax in row_axes[len(row):]:
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    return [titles[key][0] for row in panels for key, _ in row]


def rows_with(rows: list[dict], key: str) -> list[dict]:
    return [r for r in rows if key in r]
