"""`wsl data stats DIR`: the label frequency table and a log-log (Zipf) plot of it."""
from __future__ import annotations

from pathlib import Path

from data_tools.format import shards
from data_tools.labels import vocab


def frequency_table(directory: str, top: int = 20) -> str:
    manifest = shards.read_manifest(directory)
    entries = vocab.read(Path(directory) / manifest["vocabulary"])
    counts = manifest["tag_counts"]
    total = sum(counts) or 1
    order = sorted(range(len(counts)), key=lambda i: (-counts[i], i))
    lines = [f"{manifest['num_samples']} images, {len(entries)} labels, "
             f"{sum(counts) / max(1, manifest['num_samples']):.2f} labels per image",
             f"{'rank':>5} {'index':>6} {'synset':<12} {'images':>9} {'share':>7}  lemma"]
    for rank, i in enumerate(order[:top], start=1):
        lines.append(f"{rank:>5} {i:>6} {entries[i].synset:<12} {counts[i]:>9} {counts[i] / total:>7.2%}  {entries[i].lemma}")
    if len(order) > top:
        lines.append(f"... {len(order) - top} more; rarest: {entries[order[-1]].lemma} ({counts[order[-1]]})")
    return "\n".join(lines)


def zipf_plot(directory: str, path: str | Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")  # no display on cluster nodes
    import matplotlib.pyplot as plt

    manifest = shards.read_manifest(directory)
    counts = sorted((c for c in manifest["tag_counts"] if c > 0), reverse=True)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.loglog(range(1, len(counts) + 1), counts, marker=".", linestyle="-")
    ax.set_xlabel("label rank")
    ax.set_ylabel("images")
    ax.set_title(f"{manifest['name']}: {len(counts)} labels, {manifest['num_samples']} images")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
