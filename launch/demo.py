"""`wsl demo`: the pipeline end to end on generated photos, on the CPU, in a few minutes."""
from __future__ import annotations

import sys
from pathlib import Path

from data_tools.build import BuildConfig, build, summary
from data_tools.stats import frequency_table, zipf_plot
from data_tools.synthetic import write_corpus
from data_tools.verify import verify
from launch.config import build as make_config
from launch.config import to_dict
from pretrain.config import PretrainConfig
from pretrain.train import run as train

REPO = Path(__file__).resolve().parents[1]


def step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def run_demo(workdir: Path) -> int:
    workdir.mkdir(parents=True, exist_ok=True)
    step(f"generating 600 tagged photos in {workdir / 'raw'}")
    manifest = write_corpus(workdir / "raw", 600, size=(160, 120))

    step("wsl data build (WordNet canonicalisation, vocabulary, shards)")
    cfg = make_config(BuildConfig, [str(REPO / "configs/data/demo.yaml")],
                      [f"input.manifest={manifest}", f"output={workdir / 'shards'}"])
    print(summary(build(cfg)))

    step("wsl data verify")
    problems = verify(str(workdir / "shards"))
    if problems:
        print("\n".join(problems[:20]), file=sys.stderr)
        return 1
    print("all shards check out")

    step("wsl data stats")
    print(frequency_table(str(workdir / "shards"), top=10))
    print(f"Zipf plot: {zipf_plot(str(workdir / 'shards'), workdir / 'shards' / 'zipf.png')}")

    step("wsl pretrain (tiny ResNeXt on the CPU, softmax over k-hot/k targets)")
    cfg = make_config(PretrainConfig, [str(REPO / "configs/pretrain/tiny.yaml")],
                      [f"data.train={workdir / 'shards'}", f"data.val={workdir / 'shards'}",
                       f"run_dir={workdir / 'run'}"])
    train(cfg, to_dict(cfg))
    print(f"metrics: {workdir / 'run' / 'metrics.jsonl'}, curves: {workdir / 'run' / 'curves.png'}, "
          f"backbone: {workdir / 'run' / 'backbone.pt'}")
    return 0
