"""`wsl demo`: the paper's claim in miniature, on generated photos, on the CPU, in minutes.

Every stage goes through its `wsl` subcommand (launch.commands.run), as a user would type it:

    generate (launch.fixtures.scenes) -> wsl data build x4 (hashtags, held-out hashtags with the
    training vocabulary, target train, target test) -> wsl data stats (zipf.png)
    -> wsl data dedup --apply (report.html)
    -> wsl pretrain on the filtered shards, held-out hashtags as data.val
    -> wsl finetune mode=linear and a short mode=full, from the pretrained backbone and from
    a random-init one -> results.md / results.json and PASS/FAIL lines for the goals.

The goals (issue 12): hashtag mAP on held-out images clearly above a label-prior scorer,
linear probe of the pretrained trunk >= 10 points top-1 above random init, every planted
leak found and removed. A failed goal makes the exit status 1.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from data_tools.common.config import build as make_config
from data_tools.common.config import to_dict
from data_tools.common.log import say
from data_tools.format import shards
from data_tools.loaders import make_loader
from launch.commands import run as wsl
from launch.fixtures.concepts import SceneConfig
from launch.fixtures.scenes import generate
from pretrain.backbone import export
from pretrain.config import PretrainConfig
from pretrain.evaluate import collect, metrics
from pretrain.models import build_model

REPO = Path(__file__).resolve().parents[1]
MAP_OVER_PRIOR = 1.5        # "clearly above": held-out mAP at least this many times the prior's
PROBE_POINTS = 10.0         # pretrained probe top-1 minus random-init probe top-1, in points
# One large object on a plain background: many generated scenes share a layout, which the
# descriptor alone scores as high as a transformed copy. The alignment check tells them
# apart (data_tools/dedup/verify.py; docs/benchmarks.md, "Demo"). Local features, the
# default, match the object drawn alike in many scenes: 111 removed for 6 leaks
# (docs/benchmarks.md, "Default switch").
DEDUP_CHECK = "verify.method=align"
MARKER = ".wsl-demo"        # marks a folder the demo wrote, so a rerun may replace it


@dataclass(frozen=True)
class Variant:
    scenes: SceneConfig
    pretrain: str           # configs/pretrain/*.yaml
    finetune: str           # configs/finetune/*.yaml (full fine-tuning; the probe adds mode=linear)


# Objects in their own patterns, one per hashtag image, large and uncluttered, with fewer scene
# and popular tags: what SGD on a tiny ResNeXt learns within the budget (docs/benchmarks.md, "Demo").
# Drawn at 80 px and trained at 40 (the configs' image_size): at 40 px a re-encoded copy's JPEG
# blocks are as large as the details that tell it from a look-alike.
LEARNABLE = dict(size=80, own_pattern=1.0, scale=0.4, max_objects=1, clutter=0, textured=0.0,
                 scene_tag=0.3, popular=0.2, tag_keep=0.95)
VARIANTS = {
    "full": Variant(SceneConfig(train=6000, heldout=600, **LEARNABLE), "demo.yaml", "demo.yaml"),
    "fast": Variant(SceneConfig(train=2000, heldout=300, target_train=30, target_test=20, **LEARNABLE),
                    "demo_fast.yaml", "demo_fast.yaml"),
}


class LabelPrior(torch.nn.Module):
    """Scores every image with the training tag counts: each tag's AP is its prevalence."""

    def __init__(self, counts: list[int]):
        super().__init__()
        self.register_buffer("scores", torch.tensor(counts, dtype=torch.float32))

    def forward(self, images):
        return self.scores.expand(len(images), -1)


def prior_metrics(train: Path, heldout: Path, loader_cfg) -> dict:
    """mAP and precision@k of the label prior on the held-out shards, through the same evaluation."""
    loader = make_loader(loader_cfg, heldout, 0, 1, torch.device("cpu"), "eval")
    table = collect(LabelPrior(shards.read_manifest(train)["tag_counts"]).eval(), loader, torch.device("cpu"),
                    bf16=False)
    return metrics(table, torch.device("cpu"))


def stage(title: str, argv: list[str]) -> None:
    """One `wsl` subcommand, echoed as the user would type it; a non-zero status stops the demo."""
    sys.stderr.flush()   # what the last stage said lands above this header, in the order said
    print(f"\n== {title}\n$ wsl {' '.join(argv)}", flush=True)
    status = wsl(argv)
    if status > 128:  # Ctrl-C or SIGTERM: the stage said so; the demo stops with the same status
        say(f"wsl demo: stopped during `wsl {' '.join(argv[:2])}`; run it again to start over")
        raise SystemExit(status)
    if status:
        raise SystemExit(f"wsl demo: `wsl {' '.join(argv[:2])}` failed (status {status})")


def build_shards(out: Path, *overrides: str) -> list[str]:
    return ["data", "build", "-c", str(REPO / "configs/data/demo.yaml"), f"output={out}", "progress=false",
            *overrides]


def leak_status(workdir: Path, dedup: Path, filtered: Path) -> dict:
    """Planted leaks (leaks.json), those dedup matched, and those absent from the filtered shards."""
    planted = {leak["path"].removeprefix("hashtags/") for leak in
               json.loads((workdir / "raw" / "leaks.json").read_text())["leaks"]}
    matched = {json.loads(line)["train_path"] for line in open(dedup / "matches.jsonl")}
    found = {p for p in planted if any(m.endswith(p) for m in matched)}
    kept = set()
    for entry in shards.read_manifest(filtered)["shards"]:
        for _, files in shards.iter_samples(filtered / entry["file"]):
            kept.add(json.loads(files["json"]).get("path", ""))
    removed = {p for p in found if not any(k.endswith(p) for k in kept)}
    return {"planted": len(planted), "found": len(found), "removed": len(removed),
            "false_matches": len(matched) - len(found)}


def random_backbone(config: dict, seed: int, path: Path) -> Path:
    """A freshly built trunk, every residual branch live, exported like a pretrained one. It
    records the pretraining config it stands in for (no step of it run), so the leak guard
    sees the same filtered data as for the pretrained trunk."""
    torch.manual_seed(seed)
    name = config["model"]["name"]
    model = build_model(name, 0, zero_init_residual=False)
    return export(model.state_dict(), name, {**config, "init": "random, untrained"}, path)


def claim(workdir: Path) -> None:
    """Start from scratch in `workdir`: an earlier demo's output is replaced, anything else is
    left alone and refused (the stages would resume or mix with it)."""
    if workdir.exists() and not workdir.is_dir():
        raise NotADirectoryError(f"--workdir {workdir} is a file")
    if workdir.is_dir() and any(workdir.iterdir()):
        if not (workdir / MARKER).is_file():
            raise ValueError(f"--workdir {workdir} is not empty and holds no earlier demo ({MARKER}): "
                             "give an empty or new folder")
        for entry in workdir.iterdir():
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / MARKER).write_text("written by `wsl demo`, which may replace this folder's contents\n")


def run_demo(workdir: Path, fast: bool = False, seed: int = 0) -> int:
    if seed < 0:
        raise ValueError(f"--seed must be >= 0, got {seed}")
    started = time.time()
    variant = VARIANTS["fast" if fast else "full"]
    claim(workdir)
    raw = workdir / "raw"
    scenes = SceneConfig(**{**asdict(variant.scenes), "seed": seed})
    print(f"== generating the corpus in {raw} ({scenes.train} hashtag images, {scenes.heldout} held out, "
          f"{scenes.leaks} leaks planted)", flush=True)
    corpus = generate(raw, scenes)

    hashtags, heldout, filtered = workdir / "shards", workdir / "heldout", workdir / "filtered"
    target = {split: workdir / f"target_{split}" for split in ("train", "test")}
    stage("hashtag shards", build_shards(hashtags, f"input.manifest={corpus.train}"))
    stage("held-out hashtag shards, the training vocabulary",
          build_shards(heldout, f"input.manifest={corpus.heldout}", f"vocab.reuse={hashtags}", "shards.name=heldout"))
    for split, root in (("train", corpus.target_train), ("test", corpus.target_test)):
        stage(f"target task, {split}", build_shards(target[split], f"input.imagefolder={root}", f"shards.name={split}"))
    stage("hashtag frequencies (Zipf plot)", ["data", "stats", str(hashtags), "--top", "10"])
    dedup = workdir / "dedup"
    stage("near-duplicates of the target test set", ["data", "dedup", "--train", str(hashtags), "--against",
                                                    f"target_test={target['test']}", "--out", str(dedup),
                                                    "--apply", str(filtered), DEDUP_CHECK])

    pretrain_yaml = str(REPO / "configs/pretrain" / variant.pretrain)
    run = workdir / "pretrain"
    stage("pretraining a tiny ResNeXt on the filtered hashtags",
          ["pretrain", "-c", pretrain_yaml, f"data.train={filtered}", f"data.val={heldout}", f"run_dir={run}",
           f"seed={seed}", f"data.loader.seed={seed}"])
    pre_cfg = make_config(PretrainConfig, [pretrain_yaml],
                          [f"data.train={filtered}", f"data.val={heldout}", f"run_dir={run}", f"seed={seed}"])
    backbones = {"pretrained": run / "backbone.pt",
                 "random": random_backbone(to_dict(pre_cfg), seed, workdir / "random_backbone.pt")}

    finetune_yaml = str(REPO / "configs/finetune" / variant.finetune)
    transfer: dict[str, dict] = {}
    for mode in ("linear", "full"):
        for init, path in backbones.items():
            out = workdir / f"{'probe' if mode == 'linear' else 'finetune'}_{init}"
            stage(f"{'linear probe' if mode == 'linear' else 'full fine-tune'} from the {init} trunk",
                  ["finetune", "-c", finetune_yaml, f"mode={mode}", f"backbone={path}", f"run_dir={out}",
                   f"data.train={target['train']}", f"data.val={target['test']}", f"seed={seed}",
                   f"data.loader.seed={seed}"])
            transfer[f"{mode}_{init}"] = json.loads((out / "results.json").read_text())

    val = [json.loads(line) for line in open(run / "metrics.jsonl")]
    val = [row for row in val if "val/mAP" in row][-1]
    prior = prior_metrics(filtered, heldout, pre_cfg.data.loader)
    results = {
        "seed": seed, "variant": "fast" if fast else "full",
        "hashtags": {"mAP": val["val/mAP"], "precision@1": val["val/precision@1"],
                     "precision@5": val["val/precision@5"], "prior_mAP": prior["mAP"],
                     "prior_precision@1": prior["precision@1"], "prior_precision@5": prior["precision@5"]},
        "probe_top1": {init: transfer[f"linear_{init}"]["top1"] for init in backbones},
        "finetune_top1": {init: transfer[f"full_{init}"]["top1"] for init in backbones},
        "leaks": leak_status(workdir, dedup, filtered),
        "files": sorted(str(p) for p in workdir.rglob("*") if p.suffix in (".png", ".html")),
    }
    results["goals"] = goals(results)
    results["seconds"] = round(time.time() - started)
    shards.write_json(workdir / "results.json", results)
    table = render(results)
    (workdir / "results.md").write_text(table + "\n")
    print("\n" + table, flush=True)
    print(f"\nresults: {workdir / 'results.md'}, {workdir / 'results.json'}")
    return 0 if all(g["pass"] for g in results["goals"]) else 1


def goals(r: dict) -> list[dict]:
    h, probe, leaks = r["hashtags"], r["probe_top1"], r["leaks"]
    margin = 100 * (probe["pretrained"] - probe["random"])
    return [
        {"goal": f"held-out hashtag mAP >= {MAP_OVER_PRIOR}x the label prior's",
         "value": f"{h['mAP']:.3f} vs {h['prior_mAP']:.3f}", "pass": h["mAP"] >= MAP_OVER_PRIOR * h["prior_mAP"]},
        {"goal": f"linear probe, pretrained >= random init + {PROBE_POINTS:.0f} points top-1",
         "value": f"{margin:+.1f} points", "pass": margin >= PROBE_POINTS},
        {"goal": "every planted leak found and removed",
         "value": f"{leaks['planted']} planted, {leaks['found']} found, {leaks['removed']} removed",
         "pass": leaks["found"] == leaks["removed"] == leaks["planted"]},
    ]


def render(r: dict) -> str:
    h, pct = r["hashtags"], lambda x: f"{100 * x:.1f} %"
    lines = [
        f"## wsl demo ({r['variant']}, seed {r['seed']}, {r['seconds']} s)", "",
        "| measure | pretrained on hashtags | baseline |", "|---|---|---|",
        f"| held-out hashtag mAP | {h['mAP']:.3f} | {h['prior_mAP']:.3f} (label prior) |",
        f"| held-out precision@1 | {h['precision@1']:.3f} | {h['prior_precision@1']:.3f} (label prior) |",
        f"| held-out precision@5 | {h['precision@5']:.3f} | {h['prior_precision@5']:.3f} (label prior) |",
        f"| target linear probe top-1 | {pct(r['probe_top1']['pretrained'])} | "
        f"{pct(r['probe_top1']['random'])} (random init) |",
        f"| target fine-tune top-1 | {pct(r['finetune_top1']['pretrained'])} | "
        f"{pct(r['finetune_top1']['random'])} (random init) |",
        f"| leaks planted / found / removed | {r['leaks']['planted']} / {r['leaks']['found']} / "
        f"{r['leaks']['removed']} | {r['leaks']['false_matches']} other training images matched |",
        "",
    ]
    lines += [f"{'PASS' if g['pass'] else 'FAIL'}  {g['goal']}: {g['value']}" for g in r["goals"]]
    lines += ["", "Files:"] + [f"- {f}" for f in r["files"]]
    return "\n".join(lines)
