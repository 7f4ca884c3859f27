"""Linear probe: our batched L2 sweep (finetune.logreg) against scikit-learn's
LogisticRegression (lbfgs) fitted once per C, on the same cached features and C grid.

The features are synthetic but shaped like pooled CNN features: non-negative, correlated,
with classes that overlap (a low-dimensional class signal, mixed into D dimensions, plus
noise, through a ReLU), so the probe is not trivially separable. Both fit on a train
split, pick C on a validation split and report test accuracy at their pick.
Goals: accuracy within 0.5 point of scikit-learn; >= 5x faster.
Also: feature extraction img/s (finetune.features.extract) on generated shards.

    python bench/linprobe.py                                 # 20k x 2048, 200 classes, 45 C values
    python bench/linprobe.py --train 5000 --dim 512 --classes 50 --extract-images 256
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from finetune import logreg  # noqa: E402


def synthetic_features(n: int, dim: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    latent = 64
    centres = np.random.default_rng(0).normal(0, 1, (classes, latent))      # the same classes in every split
    mix = np.random.default_rng(1).normal(0, 1 / np.sqrt(latent), (latent, dim))
    y = rng.integers(0, classes, n)
    z = centres[y] + rng.normal(0, 2.5, (n, latent))
    x = np.maximum(z @ mix + rng.normal(0, 0.5, (n, dim)) + 0.3, 0)
    return x.astype(np.float32), y


def ours(data, classes, cs, max_iter, device) -> dict:
    (xt, yt), (xv, yv), (xs, ys) = data
    start = time.perf_counter()
    heads = logreg.fit(xt, yt, classes, cs, max_iter, device)
    val = logreg.accuracy(heads, xv, yv, device)
    seconds = time.perf_counter() - start
    best = int(np.argmax(val))
    test = (heads.logits(torch.as_tensor(xs, device=device), best).argmax(1).cpu().numpy() == ys).mean()
    return {"seconds": seconds, "val": val, "best": best, "test": float(test), "iterations": sum(heads.iterations)}


def sklearn(data, cs, max_iter) -> dict:
    from sklearn.linear_model import LogisticRegression
    (xt, yt), (xv, yv), (xs, ys) = data
    start = time.perf_counter()
    models, val = [], []
    for c in cs:
        model = LogisticRegression(C=c, max_iter=max_iter).fit(xt, yt)
        models.append(model)
        val.append(model.score(xv, yv))
    seconds = time.perf_counter() - start
    best = int(np.argmax(val))
    return {"seconds": seconds, "val": val, "best": best, "test": float(models[best].score(xs, ys)),
            "iterations": int(sum(m.n_iter_[0] for m in models))}


def extraction(images: int, model_name: str, size: int, batch: int, device: str) -> float:
    """img/s of finetune.features.extract over generated JPEG shards (decode included)."""
    from data_tools.build import BuildConfig, build
    from data_tools.loaders import LoaderConfig
    from data_tools.synthetic import photo
    from finetune.features import extract
    from launch.config import build as make_config
    from pretrain.models import build_model
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for i in range(images):
            folder = tmp / "raw" / f"class{i % 10}"
            folder.mkdir(parents=True, exist_ok=True)
            photo(rng, size + 32, size + 16).save(folder / f"{i}.jpg", quality=90)
        build(make_config(BuildConfig, [], [f"input.imagefolder={tmp / 'raw'}", f"output={tmp / 'shards'}",
                                             "progress=false", "shards.samples=256"]))
        model = build_model(model_name, 0)
        cfg = LoaderConfig(batch_size=batch, image_size=size, resize_size=size + size // 7)
        start = time.perf_counter()
        extract(model, str(tmp / "shards"), cfg, torch.device(device), None, tmp / "feats" / "train",
                {"backbone": model_name}, bf16=device == "cuda")
        return images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=20000, help="training features (a fifth more for val and test each)")
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--classes", type=int, default=200)
    parser.add_argument("--steps", type=int, default=45, help="C values, log-spaced over [--c-min, --c-max]")
    parser.add_argument("--c-min", type=float, default=1e-4)
    parser.add_argument("--c-max", type=float, default=1e2)
    parser.add_argument("--max-iter", type=int, default=100, help="both solvers (scikit-learn's default)")
    parser.add_argument("--extract-images", type=int, default=512)
    parser.add_argument("--extract-model", default="resnext_tiny")
    parser.add_argument("--extract-size", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    held = max(args.classes, args.train // 5)
    data = [synthetic_features(n, args.dim, args.classes, seed) for n, seed in ((args.train, 10), (held, 11), (held, 12))]
    cs = logreg.c_grid(args.c_min, args.c_max, args.steps)
    print(f"{args.train} x {args.dim} features, {args.classes} classes, {args.steps} C values in "
          f"[{args.c_min:g}, {args.c_max:g}], {torch.get_num_threads()} threads", flush=True)
    a = ours(data, args.classes, cs, args.max_iter, args.device)
    print(f"ours:         {a['seconds']:8.1f} s  {a['iterations']} L-BFGS head-iterations  "
          f"best C {cs[a['best']]:.3g}  test top-1 {100 * a['test']:.2f} %", flush=True)
    b = sklearn(data, cs, args.max_iter)
    print(f"scikit-learn: {b['seconds']:8.1f} s  {b['iterations']} lbfgs iterations over {len(cs)} fits  "
          f"best C {cs[b['best']]:.3g}  test top-1 {100 * b['test']:.2f} %")
    gap = max(abs(x - y) for x, y in zip(a["val"], b["val"]))
    print(f"speed-up {b['seconds'] / a['seconds']:.1f}x (goal >= 5x); test top-1 gap "
          f"{100 * (a['test'] - b['test']):+.2f} points (goal within 0.5); largest val gap at one C {100 * gap:.2f} points")
    if args.extract_images:
        rate = extraction(args.extract_images, args.extract_model, args.extract_size, 64, args.device)
        print(f"feature extraction: {rate:.0f} img/s ({args.extract_model}, {args.extract_size} px, {args.device}, "
              f"decode included)")


if __name__ == "__main__":
    main()
