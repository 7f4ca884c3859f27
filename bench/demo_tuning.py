"""Does the demo's generated corpus prove the paper's claim? Evidence for its tuning.

Per seed: generate the corpus (launch.fixtures.scenes), build the shards (hashtag training,
held-out hashtags with the training vocabulary, target train/test), pretrain a tiny
ResNeXt on the hashtags (configs/pretrain/demo.yaml), then
- hashtag mAP and precision@1 on the held-out images against a label-prior baseline (every
  image scored with the training tag frequencies: AP = each tag's prevalence);
- linear probe top-1 on the target task, pretrained trunk vs a randomly initialised one:
  global-pooled features, standardised, a logistic regression (a yardstick only; the demo
  uses finetune's probe).
Goals: mAP clearly above the prior, pretrained probe >= 10 points above random, on every seed.

    python bench/demo_tuning.py                 # 3 seeds, full size (configs/pretrain/demo.yaml)
    python bench/demo_tuning.py --fast --seeds 0   # what CI's `--fast` demo runs
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from data_tools.build import BuildConfig, build  # noqa: E402
from data_tools.common.config import build as make_config  # noqa: E402
from data_tools.common.config import to_dict  # noqa: E402
from data_tools.loaders import make_loader  # noqa: E402
from launch.demo import PROBE_POINTS, VARIANTS, prior_metrics  # noqa: E402
from launch.fixtures.concepts import SceneConfig  # noqa: E402
from launch.fixtures.scenes import generate  # noqa: E402
from pretrain.config import PretrainConfig  # noqa: E402
from pretrain.evaluate import collect  # noqa: E402
from pretrain.models import build_model  # noqa: E402
from pretrain.train import run as pretrain  # noqa: E402

GOAL_PROBE_POINTS = PROBE_POINTS
DEVICE = torch.device("cpu")


class Features(torch.nn.Module):
    """A trunk whose output is its global-pooled features, so evaluate.collect gathers them."""

    def __init__(self, trunk: torch.nn.Module):
        super().__init__()
        self.trunk = trunk

    def forward(self, images):
        return self.trunk.forward_features(images)


def build_shards(out: Path, *overrides: str) -> dict:
    cfg = make_config(BuildConfig, [str(REPO / "configs/data/demo.yaml")],
                      [f"output={out}", "progress=false", *overrides])
    return build(cfg)


def eval_table(model: torch.nn.Module, shard_dir: Path, loader_cfg) -> dict:
    loader_cfg = dataclasses.replace(loader_cfg, sqrt_resample=False)
    loader = make_loader(loader_cfg, shard_dir, 0, 1, DEVICE, "eval")
    return collect(model.eval(), loader, DEVICE, bf16=False)


def probe(trunk: torch.nn.Module, target: dict[str, Path], loader_cfg) -> float:
    """Top-1 of a logistic regression on the trunk's frozen features."""
    with torch.no_grad():
        train = eval_table(Features(trunk), target["train"], loader_cfg)
        test = eval_table(Features(trunk), target["test"], loader_cfg)
    scaler = StandardScaler().fit(train["scores"].numpy())
    clf = LogisticRegression(C=0.1, max_iter=3000).fit(scaler.transform(train["scores"].numpy()),
                                                       train["labels"].numpy())
    return float((clf.predict(scaler.transform(test["scores"].numpy())) == test["labels"].numpy()).mean())


def one_seed(seed: int, variant: str, workdir: Path, scene: list[str], overrides: list[str]) -> dict:
    clock, times = time.time(), {}

    def lap(name: str) -> None:
        nonlocal clock
        times[name] = round(time.time() - clock, 1)
        clock = time.time()

    scene_cfg = make_config(SceneConfig, [], [f"{k}={v}" for k, v in dataclasses.asdict(VARIANTS[variant].scenes).items()]
                            + [f"seed={seed}", *scene])
    corpus = generate(workdir / "raw", scene_cfg, progress=False)
    lap("generate")
    train_dir, held_dir = workdir / "shards", workdir / "heldout"
    build_shards(train_dir, f"input.manifest={corpus.train}")
    build_shards(held_dir, f"input.manifest={corpus.heldout}", f"vocab.reuse={train_dir}", "shards.name=heldout")
    target = {split: workdir / f"target_{split}" for split in ("train", "test")}
    for split, root in (("train", corpus.target_train), ("test", corpus.target_test)):
        build_shards(target[split], f"input.imagefolder={root}", f"shards.name={split}")
    lap("build")

    preset = REPO / "configs/pretrain" / VARIANTS[variant].pretrain
    cfg = make_config(PretrainConfig, [str(preset)],
                      [f"data.train={train_dir}", f"data.val={held_dir}", f"run_dir={workdir / 'run'}",
                       f"seed={seed}", f"data.loader.seed={seed}", *overrides])
    pretrain(cfg, to_dict(cfg))
    lap("pretrain")

    rows = [json.loads(line) for line in open(workdir / "run" / "metrics.jsonl")]
    val = [r for r in rows if "val/mAP" in r][-1]
    prior = prior_metrics(train_dir, held_dir, cfg.data.loader)

    backbone = torch.load(workdir / "run" / "backbone.pt", weights_only=True)
    pretrained = build_model(cfg.model.name, 0)
    pretrained.load_state_dict(backbone["state_dict"])
    torch.manual_seed(seed)
    # Every residual branch live (not zero-initialised): the strongest random trunk.
    random_init = build_model(cfg.model.name, 0, zero_init_residual=False)
    result = {
        "seed": seed, "variant": variant,
        "mAP": val["val/mAP"], "prior_mAP": prior["mAP"],
        "p@1": val["val/precision@1"], "prior_p@1": prior["precision@1"],
        "probe_pretrained": probe(pretrained, target, cfg.data.loader),
        "probe_random": probe(random_init, target, cfg.data.loader),
        "final_loss": next(r["loss"] for r in reversed(rows) if "loss" in r),
    }
    lap("probe")
    result["seconds"] = times
    result["load_avg"] = round(os.getloadavg()[0], 1)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="the small corpus and schedule CI runs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workdir", help="keep the runs here (default: a temporary directory)")
    parser.add_argument("--scene", nargs="*", default=[], metavar="KEY=VALUE", help="SceneConfig overrides")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="pretraining config overrides")
    args = parser.parse_args()
    variant = "fast" if args.fast else "full"
    results, ok = [], True
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(args.workdir or tmp)
        for seed in args.seeds:
            r = one_seed(seed, variant, base / f"{variant}-seed{seed}", args.scene, args.set)
            results.append(r)
            margin = 100 * (r["probe_pretrained"] - r["probe_random"])
            passed = margin >= GOAL_PROBE_POINTS and r["mAP"] > 1.5 * r["prior_mAP"]
            ok &= passed
            print(json.dumps(r), flush=True)
            print(f"seed {seed}: mAP {r['mAP']:.3f} vs prior {r['prior_mAP']:.3f}; probe top-1 pretrained "
                  f"{100 * r['probe_pretrained']:.1f} vs random {100 * r['probe_random']:.1f} "
                  f"({margin:+.1f} points); {sum(r['seconds'].values()):.0f} s at load {r['load_avg']}: "
                  f"{'PASS' if passed else 'FAIL'}", flush=True)
    if len(results) > 1:
        margins = [100 * (r["probe_pretrained"] - r["probe_random"]) for r in results]
        ratios = [r["mAP"] / r["prior_mAP"] for r in results]
        print(f"{variant}, {len(results)} seeds: probe margin min {min(margins):+.1f} mean {np.mean(margins):+.1f} "
              f"points; mAP / prior min {min(ratios):.2f}x")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
