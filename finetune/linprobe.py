"""Linear probe ("feature transfer" in Mahajan et al.): finetune.mode=linear.

The frozen trunk's features of train and val are extracted once (finetune.features), then
a linear head is trained on them:
- `logreg`: multinomial logistic regression over a log-spaced grid of C (DINOv2's protocol:
  45 values), fitted along the regularisation path with L-BFGS on the features read in
  blocks (finetune.logreg); C is picked on a held-out share of train (the sweep stops once
  that accuracy has peaked), then refit on all of train;
- `bn_linear`: VISSL's linear evaluation head, BatchNorm without affine + linear, SGD with
  Nesterov momentum, the LR divided by 10 at 8/28, 16/28 and 24/28 of training; on the
  centre crop's features, or (`probe.views` > 1) on random-resized, flipped crops as VISSL
  trains it, one cached view per image an epoch.
The head is written as probe.pt (the trunk with the head as its `fc`, BN folded in), which
`wsl finetune eval` reads like any fine-tuning checkpoint; val results go to results.json.
Under torchrun or srun every rank extracts a share of the features (the costly part); rank 0
then trains the head alone, after the other ranks have left the process group.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn
from tqdm import tqdm

from data_tools.common import atomic, dist, threads
from data_tools.common.log import say
from data_tools.format import shards
from finetune import features, leak, logreg
from finetune.config import FinetuneConfig
from finetune.evaluate import class_names, report, summarize
from finetune.run_dir import check_run_dir
from pretrain import backbone
from pretrain.evaluate import loader_config
from pretrain.loggers import make_loggers

VISSL_MILESTONES = (8 / 28, 16 / 28, 24 / 28)


def split(labels: np.ndarray, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (fit, holdout): `share` of each class held out, at least one row of
    every class with two or more, so no class is missing from either side by chance."""
    rng = np.random.default_rng(seed)
    fit_rows, held_rows = [], []
    for cls in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == cls))
        held = min(len(rows) - 1, max(1, round(share * len(rows)))) if len(rows) > 1 else 0
        held_rows.append(rows[:held])
        fit_rows.append(rows[held:])
    return np.sort(np.concatenate(fit_rows)), np.sort(np.concatenate(held_rows))


def sweep(cfg: FinetuneConfig, x: np.ndarray, y: np.ndarray, num_classes: int,
          device: torch.device) -> tuple[nn.Linear, dict]:
    """The logreg head at the C that is best on the holdout, refit on all rows.

    The C values are fitted in increasing order, each head starting from the previous C's
    solution (the regularisation path: neighbours' optima are close), and the sweep stops
    early once the holdout accuracy has peaked: `probe.patience` values in a row after the
    best (the first of equal ones) score no higher (`peaked`)."""
    p = cfg.probe
    cs = logreg.c_grid(p.c_min, p.c_max, p.c_steps)
    fit_rows, held_rows = split(y, p.holdout, cfg.seed)
    problem = logreg.Problem(logreg.Rows(x, y, fit_rows, device), num_classes)
    held = logreg.Rows(x, y, held_rows, device)
    heads, best, path = None, None, []
    for c in tqdm(cs, desc="fitting C", unit="C", file=sys.stderr):
        heads = logreg.solve(problem, [c], p.max_iter, p.tolerance, heads)
        score = logreg.accuracy_on(heads, held)[0]
        path.append({"C": c, "holdout_top1": score, "iterations": heads.iterations[0],
                     "converged": heads.converged[0], "stalled": heads.stalled[0]})
        if best is None or score > best[1]["holdout_top1"]:
            best = heads, path[-1]
        if peaked([step["holdout_top1"] for step in path], p.patience):
            break
    short, stalled = sum(not step["converged"] for step in path), sum(step["stalled"] for step in path)
    stopped = f" (of {len(cs)} up to {cs[-1]:.3g}: stopped, the holdout accuracy had peaked)" if len(path) < len(cs) else ""
    say(f"logreg sweep: {len(path)} values of C in [{cs[0]:.3g}, {path[-1]['C']:.3g}]{stopped}, "
        f"{sum(step['iterations'] for step in path)} L-BFGS iterations in all, "
        f"{short} head(s) not converged ({short - stalled} at probe.max_iter={p.max_iter}, {stalled} stalled: "
        f"no progress in float32); best C = {best[1]['C']:.3g} "
        f"({100 * best[1]['holdout_top1']:.2f} % on {len(held_rows)} held-out train images); refitting on all of train")
    whole = logreg.Problem(logreg.Rows(x, y, None, device), num_classes, like=problem)
    final = logreg.solve(whole, [best[1]["C"]], p.max_iter, p.tolerance, best[0])
    if not final.converged[0]:
        why = "stalled: no progress in float32" if final.stalled[0] else f"stopped at probe.max_iter={p.max_iter}"
        say(f"logreg refit: not converged ({why})")
    head = nn.Linear(x.shape[1], num_classes)
    with torch.no_grad():
        head.weight.copy_(final.weight[0].T)
        head.bias.copy_(final.bias[0])
    return head, {"C": best[1]["C"], "sweep": path, "stopped_early": len(path) < len(cs),
                  "refit": {"iterations": final.iterations[0], "converged": final.converged[0],
                            "stalled": final.stalled[0]}}


def peaked(scores: list[float], patience: int) -> bool:
    """The early-stop rule: the last `patience` scores all come after the best one (the
    first of equal bests), so none is above it. 0: never."""
    return patience > 0 and len(scores) - 1 - int(np.argmax(scores)) >= patience


def bn_linear(cfg: FinetuneConfig, x: np.ndarray, y: np.ndarray, num_classes: int,
              device: torch.device) -> tuple[nn.Linear, dict]:
    """VISSL's BN + linear head trained with SGD on the cached features, BN folded in after."""
    p = cfg.probe
    torch.manual_seed(cfg.seed)
    bn = nn.BatchNorm1d(x.shape[1], affine=False).to(device)
    linear = nn.Linear(x.shape[1], num_classes).to(device)
    opt = torch.optim.SGD(linear.parameters(), lr=p.lr * p.head_batch_size / 256, momentum=0.9, nesterov=True,
                          weight_decay=p.weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [round(m * p.epochs) for m in VISSL_MILESTONES], 0.1)
    generator = torch.Generator().manual_seed(cfg.seed)
    images = len(y) // p.views
    xs = ys = view = None
    for epoch in range(p.epochs):
        bn.train()
        if epoch % p.views != view:   # only this epoch's view of every image is loaded
            view, xs = epoch % p.views, None
            xs, ys = load_view(x, y, view, images, device)
        for rows in torch.randperm(images, generator=generator).split(p.head_batch_size):
            if len(rows) < 2:
                continue  # BN cannot normalise a batch of one
            rows = rows.to(device)
            loss = nn.functional.cross_entropy(linear(bn(xs[rows])), ys[rows])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
    say(f"bn_linear: {p.epochs} epochs, last batch loss {loss.item():.4f}")
    head = nn.Linear(x.shape[1], num_classes)
    with torch.no_grad():
        inv = (bn.running_var + bn.eps).rsqrt()
        head.weight.copy_(linear.weight * inv)
        head.bias.copy_(linear.bias - head.weight @ bn.running_mean)
    return head.cpu(), {"epochs": p.epochs, "views": p.views}


def load_view(x: np.ndarray, y: np.ndarray, view: int, images: int, device: torch.device):
    """(features float32, labels) of one view on `device`, read from the file (not mapped)."""
    rows = logreg.Rows(x, y, np.arange(view * images, (view + 1) * images), device)
    return torch.from_numpy(rows.read(rows.rows)).to(device).float(), rows.y


def run_linear(cfg: FinetuneConfig, config_dict: dict) -> dict | None:
    """The probe's results on rank 0 (None on the other ranks)."""
    env = dist.read_env()
    budget = threads.limit(cfg.threads, cfg.data.loader.worker_count())
    device = dist.pick_device(cfg.device, env)
    source = backbone.read(cfg.backbone)
    name = backbone.resolve_name(source, cfg.model.name)
    config_dict["model"]["name"] = name
    check_run_dir(cfg, config_dict)
    manifest = shards.read_manifest(cfg.data.train)
    if manifest["label_type"] != "single":
        raise ValueError(f"{cfg.data.train} holds {manifest['label_type']}-label data; the probe needs single-label shards")
    model = backbone.build(source, name, 0)
    if env.is_main:  # the first line of a run, once the checks that refuse one in a line are done
        say(budget)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    dist.init(env, device, cfg.dist_timeout_s)
    try:
        # rank 0 reads the records; an error there stops every rank, none waits for it
        dist.on_main(leak.check, source, [cfg.data.val] if cfg.data.val else [])
        extracted = extract_all(cfg, model, device, env, run_dir)
    finally:
        dist.close()  # the head is rank 0's alone: no rank waits in a collective while it trains
    if not env.is_main:
        return None
    threads.limit(cfg.threads, 0)  # the loader workers are done: the head may take the rank's cores
    return train_and_evaluate(cfg, config_dict, model, device, manifest["num_classes"], *extracted)


def extract_all(cfg: FinetuneConfig, model, device: torch.device, env: dist.DistEnv, run_dir: Path) -> tuple:
    """(train features, train labels, val features, val labels or None), every rank sharing the work."""
    stages = 3 if cfg.probe.features == "res4" else None
    bf16 = cfg.train.bf16 and device.type == "cuda"
    stat = Path(cfg.backbone).stat()
    identity = {"backbone": str(Path(cfg.backbone).resolve()), "backbone_bytes": stat.st_size,
                "backbone_mtime_ns": stat.st_mtime_ns}
    dtype = cfg.probe.feature_dtype
    x, y = features.extract(model, cfg.data.train, cfg.data.loader, device, stages,
                            run_dir / "features" / "train", identity, bf16, env, cfg.probe.views, dtype)
    vx = vy = None
    if cfg.data.val:   # at the eval resolution, as `wsl finetune eval` reads the images
        vx, vy = features.extract(model, cfg.data.val, loader_config(cfg), device, stages,
                                  run_dir / "features" / "val", identity, bf16, env, dtype=dtype)
    return x, y, vx, vy


def train_and_evaluate(cfg: FinetuneConfig, config_dict: dict, model, device: torch.device, num_classes: int,
                       x: np.ndarray, y: np.ndarray, vx: np.ndarray | None, vy: np.ndarray | None) -> dict:
    run_dir = Path(cfg.run_dir)
    train_head = sweep if cfg.probe.head == "logreg" else bn_linear
    head, record = train_head(cfg, x, y, num_classes, device)
    model.fc = head
    state = {"model": model.state_dict(), "config": config_dict, "probe": record, "progress": {"images_seen": 0}}
    with atomic.replacing(run_dir / "probe.pt", "wb") as f:
        torch.save(state, f)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config_dict, sort_keys=False))
    results = {"probe": str(run_dir / "probe.pt"), **record}
    if vx is not None:
        with torch.no_grad():
            scores = logreg.scores(head.weight.T[None], head.bias[None], logreg.Rows(vx, vy))[0]
        results.update(shards=cfg.data.val, **summarize(scores, torch.as_tensor(vy), class_names(cfg.data.val)))
        print(report(results))
        loggers = make_loggers(run_dir, True, config_dict, cfg.log.wandb, cfg.log.project, cfg.log.name)
        loggers.log({"images_seen": 0, **{f"eval/{k}": results[k] for k in ("top1", "top5", "mean_per_class")}})
        loggers.close()
    shards.write_json(run_dir / "results.json", results)
    say(f"probe: {run_dir / 'probe.pt'}; results: {run_dir / 'results.json'}")
    return results
