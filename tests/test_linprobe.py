"""The linear probe (finetune.linprobe, finetune.logreg): val features at the eval
resolution, the blocked fit on memory-mapped features, the warm-started sweep."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import FINETUNE_TINY as TINY
from helpers import REPO, child_env, pretrained
from helpers import finetune_config as config

from data_tools.common.config import build as make_config
from data_tools.common.config import to_dict
from data_tools.loaders import make_loader
from finetune import logreg
from finetune.config import FinetuneConfig
from finetune.evaluate import load_model
from finetune.linprobe import peaked, split, sweep
from finetune.train import run
from pretrain.evaluate import collect, loader_config


def test_probe_val_features_at_the_eval_resolution(data, backbone_file, tmp_path):  # noqa: F811
    """The probe scores val as `wsl finetune eval` does: at eval.image_size / resize_size,
    not at data.loader's training sizes (it once gave 0.944 where eval gave 1.0)."""
    run_dir = tmp_path / "probe"
    cfg = config(data, backbone_file, run_dir, "mode=linear", "probe.c_steps=3", f"data.val={data['val']}",
                 "eval.image_size=48", "eval.resize_size=56")
    results = run(cfg, to_dict(cfg))
    record = json.loads((run_dir / "features" / "val.json").read_text())
    assert (record["image_size"], record["resize_size"]) == (48, 56)
    model, _, _ = load_model(run_dir / "probe.pt")
    device = torch.device("cpu")
    table = collect(model.eval(), make_loader(loader_config(cfg), str(data["val"]), 0, 1, device, "eval"), device, False)
    cached = torch.as_tensor(np.load(run_dir / "features" / "val.features.npy"))
    with torch.no_grad():
        scores = model.model.fc(cached)
    torch.testing.assert_close(scores, table["scores"], rtol=1e-3, atol=1e-3 * table["scores"].abs().max().item())
    assert results["top1"] == (table["scores"].argmax(1) == table["labels"]).float().mean().item()


def overlapping(n: int, dim: int, classes: int, seed: int, noise: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Non-negative features whose classes overlap: accuracy depends on C."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(0).normal(0, 1, (classes, dim))
    y = rng.integers(0, classes, n)
    return np.maximum(centres[y] + rng.normal(0, noise, (n, dim)) + 0.5, 0).astype(np.float32), y


def saved(tmp_path, x: np.ndarray, name: str = "train") -> np.ndarray:
    np.save(tmp_path / f"{name}.npy", x)
    return np.load(tmp_path / f"{name}.npy", mmap_mode="r")


def probe_config(*overrides: str) -> FinetuneConfig:
    return make_config(FinetuneConfig, [], ["backbone=b", "run_dir=r", "data.train=t", "mode=linear", *overrides])


def test_blocked_fit_on_a_memmap_equals_the_in_memory_fit(tmp_path, monkeypatch):
    x, y = overlapping(500, 24, 4, 1)
    rows = split(y, 0.2, 0)[0]
    whole = logreg.fit(x[rows], y[rows], 4, [0.01, 1.0], max_iter=30)
    monkeypatch.setattr(logreg, "BLOCK_FLOATS", 24 * 37)   # 37 rows a block: 11 blocks, the last one short
    monkeypatch.setattr(logreg, "ROTATED_BYTES", 0)        # heads rotated, not the (small) features
    blocked = logreg.fit(saved(tmp_path, x), y, 4, [0.01, 1.0], max_iter=30, rows=rows)
    assert blocked.iterations == whole.iterations
    torch.testing.assert_close(blocked.weight, whole.weight, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(blocked.bias, whole.bias, rtol=1e-4, atol=1e-5)
    assert logreg.accuracy(blocked, saved(tmp_path, x), y, rows=rows) == logreg.accuracy(whole, x[rows], y[rows])


# Run in a fresh process: the growth of its peak memory (VmHWM, reset just before) over its
# memory before the probe, after one warm-up call on a few rows has loaded the code it uses.
MEMORY = """
import sys
import numpy as np, torch
from finetune import linprobe, logreg
from finetune.config import FinetuneConfig
from data_tools.common.config import build
what, features, labels, classes = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
logreg.CHUNK_FLOATS = logreg.BLOCK_FLOATS = 1 << 16   # blocks scaled down with the problem,
logreg.ROTATED_BYTES = 0                              # and no rotated copy of "small" features
cfg = build(FinetuneConfig, [], ["backbone=b", "run_dir=r", "data.train=t", "mode=linear", "probe.c_steps=3",
                                 "probe.max_iter=5", "probe.epochs=2", "probe.head_batch_size=512", *sys.argv[5:]])
train = linprobe.sweep if what == "logreg" else linprobe.bn_linear
x, y = np.load(features, mmap_mode="r"), np.load(labels)
small = cfg.probe.views * 100
train(cfg, np.array(x[:small]), y[:small], classes, torch.device("cpu"))

def status(key):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key)) * 1024

open("/proc/self/clear_refs", "w").write("5")
before = status("VmRSS:")
train(cfg, x, y, classes, torch.device("cpu"))
print(status("VmHWM:") - before)
"""


def probe_growth(tmp_path, x: np.ndarray, y: np.ndarray, classes: int, what: str, *overrides: str) -> int:
    """Bytes the probe's peak memory grew by, trained on `x` memory-mapped, in a fresh process."""
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    done = subprocess.run([sys.executable, "-c", MEMORY, what, str(tmp_path / "x.npy"), str(tmp_path / "y.npy"),
                           str(classes), *overrides], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return int(done.stdout.split()[-1])


@pytest.mark.slow
def test_logreg_probe_memory_on_a_memory_mapped_problem(tmp_path):
    """The sweep and refit read the features in blocks: no copy of them (the old fit made
    about 3.6 of them), well under a quarter of the file."""
    x, y = overlapping(60_000, 256, 10, 3)
    assert probe_growth(tmp_path, x, y, 10, "logreg") <= 0.25 * x.nbytes


@pytest.mark.slow
def test_bn_linear_holds_one_view_at_a_time(tmp_path):
    x, y = overlapping(4 * 12_000, 256, 10, 4)
    growth = probe_growth(tmp_path, x, y, 10, "bn_linear", "probe.head=bn_linear", "probe.views=4", "probe.epochs=4")
    assert growth <= 1.25 * x.nbytes / 4


@pytest.mark.slow
def test_the_probe_head_does_not_load_the_image_stack():
    """A process that trains a head on cached features imports no torchvision, which brings
    torch._dynamo and inductor (162 MiB of RSS: a quarter of the float16 memory goal)."""
    code = "import sys, finetune.linprobe; print([m for m in ('torchvision', 'torch._dynamo') if m in sys.modules])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split("\n")[-2] == "[]"


def test_warm_started_sweep_picks_the_cold_sweeps_C_in_fewer_iterations():
    """Where every head converges, the path (each C from its neighbour's solution) reaches
    the heads a cold batch reaches from zero: same holdout accuracy at every C."""
    x, y = overlapping(600, 24, 6, 5, noise=2.5)
    cfg = probe_config("probe.c_min=1e-4", "probe.c_max=100", "probe.c_steps=9", "probe.patience=0",
                       "probe.max_iter=1000")
    _, record = sweep(cfg, x, y, 6, torch.device("cpu"))
    cs = logreg.c_grid(1e-4, 100, 9)
    fit_rows, held_rows = split(y, cfg.probe.holdout, cfg.seed)
    cold = logreg.fit(x, y, 6, cs, 1000, rows=fit_rows)
    assert all(cold.converged) and all(step["converged"] for step in record["sweep"])
    held = logreg.accuracy(cold, x, y, rows=held_rows)
    assert 0 < int(np.argmax(held)) < len(cs) - 1, "the test needs a peak inside the grid"
    assert [step["holdout_top1"] for step in record["sweep"]] == pytest.approx(held, abs=1.5 / len(held_rows))
    assert record["C"] == cs[int(np.argmax(held))]
    assert sum(step["iterations"] for step in record["sweep"]) < sum(cold.iterations)


def test_a_head_stopped_at_max_iter_is_reported(capsys):
    x, y = overlapping(400, 16, 4, 6)
    heads = logreg.fit(x, y, 4, [1e-3, 100.0], max_iter=3, tolerance=1e-8)
    assert heads.converged == [False, False] and heads.iterations == [3, 3]
    assert logreg.fit(x, y, 4, [1e-3], max_iter=200).converged == [True]
    _, record = sweep(probe_config("probe.c_steps=3", "probe.max_iter=2", "probe.tolerance=1e-8"), x, y, 4,
                      torch.device("cpu"))
    assert [step["converged"] for step in record["sweep"]] == [False] * 3 and not record["refit"]["converged"]
    err = capsys.readouterr().err
    assert "3 head(s) not converged (3 at probe.max_iter=2, 0 stalled" in err
    assert "logreg refit: not converged (stopped at probe.max_iter=2)" in err


def test_a_stalled_head_is_reported_not_converged(capsys):
    """A gradient test float32 cannot reach: the heads stop once a step no longer changes
    their objective, short of the test (they were counted as converged)."""
    x, y = overlapping(400, 16, 4, 6)
    heads = logreg.fit(x, y, 4, [1e-3, 1.0], max_iter=1000, tolerance=1e-12)
    assert heads.converged == [False, False] and heads.stalled == [True, True]
    assert max(heads.iterations) < 1000
    _, record = sweep(probe_config("probe.c_steps=3", "probe.max_iter=1000", "probe.tolerance=1e-12"), x, y, 4,
                      torch.device("cpu"))
    assert [(step["converged"], step["stalled"]) for step in record["sweep"]] == [(False, True)] * 3
    assert (record["refit"]["converged"], record["refit"]["stalled"]) == (False, True)
    err = capsys.readouterr().err
    assert "3 head(s) not converged (0 at probe.max_iter=1000, 3 stalled" in err
    assert "logreg refit: not converged (stalled" in err


def objective(weight, bias, x: np.ndarray, y: np.ndarray, c: float) -> float:
    """sklearn's objective divided by C N: mean cross-entropy + ||W||^2 / (2 C N), in float64,
    of a (D, K) weight and (K,) bias."""
    weight, bias = torch.as_tensor(weight, dtype=torch.float64), torch.as_tensor(bias, dtype=torch.float64)
    logp = torch.log_softmax(torch.as_tensor(x, dtype=torch.float64) @ weight + bias, 1)
    return (-logp[torch.arange(len(y)), torch.as_tensor(y)].mean() + (weight ** 2).sum() / (2 * c * len(y))).item()


@pytest.mark.parametrize("c", [1e2, 1e4])
def test_objective_near_the_optimum_at_large_C(c):
    """Large C on nearly separable features: a small, flat objective whose gradient passes
    sklearn's test far above the optimum (2.8x at C = 1e4 before the relative test). The
    reference: sklearn run to convergence (tol 1e-8)."""
    from sklearn.linear_model import LogisticRegression
    x, y = overlapping(300, 64, 8, 1, noise=3.0)
    heads = logreg.fit(x, y, 8, [c], max_iter=1000)
    reference = LogisticRegression(C=c, max_iter=10_000, tol=1e-8).fit(x, y)
    optimum = objective(reference.coef_.T, reference.intercept_, x, y, c)
    assert heads.converged == [True]
    assert objective(heads.weight[0], heads.bias[0], x, y, c) <= 1.02 * optimum


def test_sweep_stops_once_the_holdout_accuracy_has_peaked():
    """Few rows, many features: large C overfits, so the holdout accuracy peaks inside the grid."""
    x, y = overlapping(240, 120, 4, 7, noise=3.0)
    cfg = probe_config("probe.c_min=1e-4", "probe.c_max=1e4", "probe.c_steps=33", "probe.patience=4")
    _, record = sweep(cfg, x, y, 4, torch.device("cpu"))
    scores = [step["holdout_top1"] for step in record["sweep"]]
    assert record["stopped_early"] and len(scores) < 33
    assert peaked(scores, 4) and not peaked(scores[:-1], 4)
    assert record["C"] == record["sweep"][int(np.argmax(scores))]["C"]
    assert [peaked(s, 2) for s in ([0.5, 0.6, 0.6, 0.4], [0.5, 0.6, 0.4, 0.7], [0.6, 0.5, 0.5])] == [True, False, True]
    assert not peaked([0.6, 0.5, 0.4], 0)


def test_float16_feature_storage(data, backbone_file, tmp_path):  # noqa: F811
    """probe.feature_dtype=float16 halves the cached files (a new extraction: the record
    names the dtype) and the probe reads them as float32 blocks; the head changes little."""
    run_dir = tmp_path / "probe"
    results = {}
    for dtype in ("float32", "float16"):
        cfg = config(data, backbone_file, run_dir, "mode=linear", "probe.c_steps=3", f"data.val={data['val']}",
                     f"probe.feature_dtype={dtype}")
        results[dtype] = run(cfg, to_dict(cfg))
        for part in ("train", "val"):
            assert np.load(run_dir / "features" / f"{part}.features.npy", mmap_mode="r").dtype == dtype
    assert results["float16"]["C"] == results["float32"]["C"]
    assert abs(results["float16"]["top1"] - results["float32"]["top1"]) <= 1 / 24


@pytest.mark.timeout(300)
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["linear", "full"])
def test_a_failing_leak_check_stops_every_rank(data, tmp_path, mode):  # noqa: F811
    """The leak check reads the backbone's pretraining manifest, here truncated. It ran on
    rank 0 alone, before the process group: rank 0 stopped with the error while rank 1 waited
    for it in dist.init. Every rank now stops with the same one line naming the file, in
    the probe and in full fine-tuning."""
    pre = tmp_path / "pretrain-shards"
    pre.mkdir()
    (pre / "manifest.json").write_text('{"shards": [{"file": "train-0')
    backbone_path = pretrained(tmp_path / "backbone.pt", pre)
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                          "--master-port", str(32500 + os.getpid() % 1000), "-m", "launch.cli", "finetune",
                          f"backbone={backbone_path}", f"data.train={data['train']}", f"data.val={data['val']}",
                          f"run_dir={tmp_path / 'run'}", *TINY, f"mode={mode}", "dist_timeout_s=120"],
                         cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=240)
    errors = [line for line in two.stderr.splitlines() if line.startswith("wsl: error:")]
    assert two.returncode != 0 and len(errors) == 2, two.stderr[-3000:]
    assert all(str(pre / "manifest.json") in line for line in errors), errors
