"""`wsl finetune` on real shards of generated JPEGs: tiny ResNeXt, CPU, real processes."""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from helpers import REPO, child_env, cli, run_as_users_do, straight_and_resumed
from PIL import Image

from data_tools.build import BuildConfig, build
from data_tools.common import dist
from data_tools.common.config import ConfigError, to_dict
from data_tools.common.config import build as make_config
from data_tools.format import shards
from finetune import leak, logreg
from finetune.config import FinetuneConfig
from finetune.linprobe import split
from finetune.train import run
from launch.cli import main
from launch.commands import evaluate_checkpoint
from pretrain import backbone, checkpoint
from pretrain.backbone import export
from pretrain.metrics import confusion_matrix, mean_per_class_accuracy, most_confused
from pretrain.models import build_model
from pretrain.optim import make_optimizer, set_lr
from pretrain.resume import resume_state

# Six classes, so top-5 is not trivially 100 %.
COLOURS = {"black": (20, 20, 20), "blue": (30, 60, 200), "green": (40, 180, 60), "red": (210, 40, 40),
           "white": (235, 235, 235), "yellow": (220, 210, 40)}
TINY = ["device=cpu", "log.wandb=off", "train.bottleneck_seconds=0", "data.loader.batch_size=8",
        "data.loader.image_size=32", "data.loader.resize_size=36", "data.loader.workers=1",
        "data.loader.backend=pil", "optim.warmup_images=16", "optim.schedule=cosine", "log.every_steps=1",
        "checkpoint.keep=100", "optim.weight_decay=0"]


def colour_folder(root: Path, per_class: int, seed: int) -> Path:
    """root/CLASS/*.jpg: each class its own colour, with noise and a random disc per image."""
    rng = np.random.default_rng(seed)
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            arr = np.clip(np.array(colour) + rng.normal(0, 25, (40, 48, 3)), 0, 255)
            cx, cy = rng.integers(0, 48), rng.integers(0, 40)
            y, x = np.mgrid[0:40, 0:48]
            arr[(x - cx) ** 2 + (y - cy) ** 2 < 64] = rng.uniform(0, 255, 3)
            Image.fromarray(arr.astype(np.uint8)).save(root / name / f"{i}.jpg", quality=90)
    return root


def imagefolder_shards(folder: Path, out: Path) -> Path:
    """`wsl data build -c configs/data/imagenet.yaml input.imagefolder=...`, in process."""
    cfg = make_config(BuildConfig, [str(REPO / "configs/data/imagenet.yaml")],
                      [f"input.imagefolder={folder}", f"output={out}", "progress=false", "workers=1",
                       "shards.samples=16"])
    build(cfg)
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("colours")
    return {"train": imagefolder_shards(colour_folder(root / "raw-train", 12, 0), root / "train"),
            "val": imagefolder_shards(colour_folder(root / "raw-val", 4, 1), root / "val"),
            "root": root}


def pretrained(path: Path, pretrain_shards: Path | None, seed: int = 0) -> Path:
    """A backbone.pt as `wsl pretrain` exports it, naming `pretrain_shards` as its data."""
    torch.manual_seed(seed)
    model = build_model("resnext_tiny", 5)
    return export(model.state_dict(), "resnext_tiny", {"data": {"train": str(pretrain_shards)}}, path)


@pytest.fixture(scope="module")
def backbone_file(data) -> Path:
    return pretrained(data["root"] / "backbone.pt", data["train"])


def config(data, backbone_path, run_dir, *overrides) -> FinetuneConfig:
    return make_config(FinetuneConfig, [], [f"backbone={backbone_path}", f"data.train={data['train']}",
                                            f"run_dir={run_dir}", *TINY, *overrides])


@pytest.mark.slow
def test_full_finetuning_learns_the_classes(data, backbone_file, tmp_path, capsys):
    cfg = config(data, backbone_file, tmp_path / "run", f"data.val={data['val']}", "train.total_images=192",
                 "checkpoint.every_images=192", "optim.lr_per_256=0.2", "trunk_lr_mult=0.5")
    results = run(cfg, to_dict(cfg))
    assert "LEAK WARNING" in capsys.readouterr().err   # the backbone was not filtered against val
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert sum("loss" in r for r in rows) >= 5 and "eval/top1" in rows[-1]  # the final evaluation adds, keeps
    assert evaluate_checkpoint(str(checkpoint.latest(tmp_path / "run")), str(data["train"]), [], tmp_path / "on-train") == 0
    assert "LEAK WARNING" in capsys.readouterr().err
    (on_train,) = (tmp_path / "on-train" / "evals").glob(f"train-*.json")
    train = json.loads(on_train.read_text())
    assert train["num_samples"] == 72
    assert train["top1"] > 0.7, f"train top-1 {train['top1']:.2f} is not well above chance (0.17)"
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["num_samples"] == 24 and saved["top1"] == results["top1"]
    assert set(saved) >= {"top1", "top5", "mean_per_class", "confused"}
    assert results["top5"] >= results["top1"] and 0 < results["mean_per_class"] <= 1


@pytest.mark.slow
def test_full_finetuning_of_a_converted_set_with_wandb_as_users_have_it(cub, backbone_file, tmp_path):
    """README's CUB and ImageNet commands: converted samples have `labels` and no `tags`,
    on which the W&B sample captions crashed (KeyError: 'tags'); W&B off hid it."""
    users = [a for a in TINY if not a.startswith("log.wandb")]
    proc = run_as_users_do(cli("finetune", f"backbone={backbone_file}", f"data.train={cub['train']}",
                               f"data.val={cub['test']}", f"run_dir={tmp_path / 'run'}", *users,
                               "train.total_images=48", "checkpoint.every_images=48", "log.sample_images=2"),
                           tmp_path, child_env(), cwd=REPO)
    records = [p.read_bytes() for p in (tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb")]
    assert len(records) == 2, "training, then its final evaluation"
    assert any(b"Black footed Albatross" in r for r in records), "the samples are not captioned with their class"
    assert proc.stderr.count("wandb sync") == 1, "the W&B upload hint is said more than once"
    assert json.loads((tmp_path / "run" / "results.json").read_text())["num_samples"] == 3


def test_trunk_gets_its_share_of_the_lr():
    model = build_model("resnext_tiny", 3)
    opt = make_optimizer(model, lr=1.0, trunk_lr_mult=0.1)
    set_lr(opt, 0.2)
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert lr_of[id(model.fc.weight)] == pytest.approx(0.2) and lr_of[id(model.fc.bias)] == pytest.approx(0.2)
    assert lr_of[id(model.conv1.weight)] == pytest.approx(0.02)
    assert lr_of[id(model.layer4[0].bn3.bias)] == pytest.approx(0.02)
    assert {g["weight_decay"] for g in opt.param_groups if g["lr"] == pytest.approx(0.02)} == {1e-4, 0.0}


@pytest.mark.timeout(900)
@pytest.mark.slow
def test_resume_after_kill9_is_bit_identical(data, backbone_file, tmp_path):
    common = [f"backbone={backbone_file}", f"data.train={data['train']}", *TINY, "train.total_images=128",
              "checkpoint.every_images=32", "trunk_lr_mult=0.5"]
    a, b = straight_and_resumed(cli("finetune", *common), tmp_path, 128, cwd=REPO, env=child_env())
    assert all(torch.equal(a[k], b[k]) for k in a), "the resumed run's weights differ from the uninterrupted run"
    start = build_model("resnext_tiny", 6).state_dict()
    assert not torch.equal(a["layer1.0.conv1.weight"], backbone.read(backbone_file).state_dict["layer1.0.conv1.weight"])
    assert a["fc.weight"].shape == start["fc.weight"].shape


def separable(n_per_class: int, classes: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Clusters around orthogonal-ish centres, far apart next to their spread."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (classes, dim)) * 4
    y = np.repeat(np.arange(classes), n_per_class)
    return (centres[y] + rng.normal(0, 0.5, (len(y), dim))).astype(np.float32), y


def test_logreg_sweep_reaches_100_percent_on_separable_features():
    x, y = separable(40, 5, 16, 0)
    vx, vy = separable(20, 5, 16, 0)   # same centres, new noise draws
    vx = vx + np.random.default_rng(1).normal(0, 0.5, vx.shape).astype(np.float32)
    heads = logreg.fit(x, y, 5, logreg.c_grid(1e-2, 1e2, 5), max_iter=100)
    accuracy = logreg.accuracy(heads, vx, vy)
    assert max(accuracy) == 1.0 and accuracy[-1] == 1.0


@pytest.mark.slow
def test_logreg_reaches_sklearns_optimum():
    """The same objective as sklearn's lbfgs (C x summed cross-entropy + ||W||^2 / 2): ours ends
    at least as low, and both predict alike."""
    sklearn = pytest.importorskip("sklearn.linear_model")
    rng = np.random.default_rng(0)
    x = (rng.normal(0, 1, (300, 12)) * np.linspace(0.2, 4, 12) + 3).astype(np.float32)
    y = (x[:, 0] + rng.normal(0, 1, 300) > 3).astype(int) + (x[:, 5] > 3)
    cs = [0.01, 1.0]
    heads = logreg.fit(x, y, 3, cs, max_iter=500, tolerance=1e-7)

    def objective(weight, bias, c):
        logits = torch.as_tensor(x, dtype=torch.float64) @ torch.as_tensor(weight, dtype=torch.float64)
        ce = torch.nn.functional.cross_entropy(logits + torch.as_tensor(bias, dtype=torch.float64),
                                               torch.as_tensor(y), reduction="sum")
        return (c * ce + 0.5 * (torch.as_tensor(weight, dtype=torch.float64) ** 2).sum()).item()

    for s, c in enumerate(cs):
        ref = sklearn.LogisticRegression(C=c, max_iter=5000, tol=1e-10).fit(x, y)
        ours = objective(heads.weight[s].numpy(), heads.bias[s].numpy(), c)
        assert ours <= objective(ref.coef_.T, ref.intercept_, c) * (1 + 1e-5), f"C={c}"
        assert np.allclose(heads.weight[s].numpy(), ref.coef_.T, atol=0.05), f"C={c}"
        predicted = heads.logits(torch.as_tensor(x), s).argmax(1).numpy()
        assert (predicted == ref.predict(x)).mean() > 0.99


@pytest.mark.timeout(960)
@pytest.mark.slow
def test_linear_probe_end_to_end_and_eval_agrees(data, backbone_file, tmp_path):
    common = [f"backbone={backbone_file}", f"data.train={data['train']}", f"data.val={data['val']}",
              f"run_dir={tmp_path / 'probe'}", *TINY, "mode=linear", "probe.c_steps=5", "probe.c_max=10"]
    first = subprocess.run(cli("finetune", *common), cwd=REPO, env=child_env(), capture_output=True, text=True,
                           timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "logreg sweep: 5 values of C" in first.stderr and "LEAK WARNING" in first.stderr
    results = json.loads((tmp_path / "probe" / "results.json").read_text())
    assert len(results["sweep"]) == 5 and results["num_samples"] == 24
    assert results["top1"] > 0.5, "colour classes from even a random trunk's features"
    cached = tmp_path / "probe" / "features" / "train.features.npy"
    assert np.load(cached, mmap_mode="r").shape == (72, build_model("resnext_tiny", 0).num_features)
    stamp = cached.stat().st_mtime_ns
    again = subprocess.run(cli("finetune", *common, "probe.head=bn_linear", "probe.epochs=30", "probe.lr=0.5"),
                           cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert cached.stat().st_mtime_ns == stamp, "the cached features were extracted again"
    probe = json.loads((tmp_path / "probe" / "results.json").read_text())
    assert probe["epochs"] == 30 and probe["top1"] > 0.5
    evaluated = subprocess.run(cli("finetune", "eval", str(tmp_path / "probe" / "probe.pt"), str(data["val"]),
                                   "data.loader.workers=1"),
                               cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=300)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert json.loads((tmp_path / "probe" / "results.json").read_text()) == probe, "the probe's record was replaced"
    # the BN-folded head on images gives what the BN head gave on the cached features
    (record,) = (tmp_path / "probe" / "evals").glob("val-*.json")
    assert json.loads(record.read_text())["top1"] == pytest.approx(probe["top1"])
    assert "top-1" in evaluated.stdout and "mean per-class" in evaluated.stdout


@pytest.mark.slow
def test_res4_probe(data, backbone_file, tmp_path):
    cfg = config(data, backbone_file, tmp_path / "probe", "mode=linear", "probe.features=res4", "probe.c_steps=3",
                 f"data.val={data['val']}")
    results = run(cfg, to_dict(cfg))
    width = build_model("resnext_tiny", 0).num_features // 2
    assert np.load(tmp_path / "probe" / "features" / "val.features.npy", mmap_mode="r").shape == (24, width)
    evaluate_checkpoint(str(tmp_path / "probe" / "probe.pt"), str(data["val"]), ["log.wandb=offline"], tmp_path / "eval")
    (record,) = (tmp_path / "eval" / "evals").glob("val-*.json")
    again = json.loads(record.read_text())
    assert again["top1"] == pytest.approx(results["top1"], abs=1 / 24)
    (logged,) = (tmp_path / "eval" / "wandb").glob("offline-run-*/run-*.wandb")
    assert logged.stat().st_size > 0


def test_each_evaluation_keeps_its_own_record_beside_the_runs(data, backbone_file, tmp_path):
    """`wsl finetune eval` wrote results.json into the checkpoint's folder, replacing the
    probe's own record (its C and sweep) and every earlier evaluation. README's FixRes
    example (data.loader.image_size=288 alone) stopped on 'resize_size must be >= image_size'."""
    cfg = config(data, backbone_file, tmp_path / "probe", "mode=linear", "probe.c_steps=2", f"data.val={data['val']}")
    run(cfg, to_dict(cfg))
    probe = (tmp_path / "probe" / "probe.pt")
    own = json.loads((tmp_path / "probe" / "results.json").read_text())
    for shard_dir, overrides in ((data["val"], []), (data["train"], []), (data["val"], ["data.loader.image_size=48"]),
                                 (data["val"], ["eval.image_size=48"])):
        assert evaluate_checkpoint(str(probe), str(shard_dir), overrides) == 0
    assert json.loads((tmp_path / "probe" / "results.json").read_text()) == own and own["C"] is not None
    records = {p.name: json.loads(p.read_text()) for p in (tmp_path / "probe" / "evals").glob("*.json")}
    assert len(records) == 4 and sum(name.startswith("train-") for name in records) == 1
    sizes = {tuple(r["overrides"]): (r["image_size"], r["resize_size"]) for r in records.values()}
    # trained at 32 from 36: a 48 crop comes from 54, by either key
    assert sizes == {(): (32, 36), ("data.loader.image_size=48",): (48, 54), ("eval.image_size=48",): (48, 54)}


def test_a_probe_saved_before_a_key_was_renamed_still_evaluates(data, backbone_file, tmp_path):
    """probe.batch_size became probe.head_batch_size: probe.pt files and fine-tuning
    checkpoints written before record the old key, and `wsl finetune eval` must read them."""
    cfg = config(data, backbone_file, tmp_path / "probe", "mode=linear", "model.name=resnext_tiny")
    recorded = to_dict(cfg)
    recorded["probe"]["batch_size"] = recorded["probe"].pop("head_batch_size")
    classes = shards.read_manifest(data["val"])["num_classes"]
    state = {"model": build_model("resnext_tiny", classes).state_dict(), "config": recorded,
             "progress": {"images_seen": 0}}
    (tmp_path / "probe").mkdir()
    torch.save(state, tmp_path / "probe" / "probe.pt")
    assert evaluate_checkpoint(str(tmp_path / "probe" / "probe.pt"), str(data["val"]), []) == 0
    (record,) = (tmp_path / "probe" / "evals").glob("val-*.json")
    assert json.loads(record.read_text())["num_samples"] == 24


def test_a_finetuning_from_before_a_key_was_renamed_resumes(data, backbone_file, tmp_path):
    cfg = config(data, backbone_file, tmp_path / "run", "model.name=resnext_tiny")
    recorded = to_dict(cfg)
    recorded["probe"]["batch_size"] = recorded["probe"].pop("head_batch_size")
    (tmp_path / "run").mkdir()
    checkpoint.save({"config": recorded, "progress": {"images_seen": 8}}, tmp_path / "run", 8, 1)
    state = resume_state(tmp_path / "run", dist.read_env(), FinetuneConfig, to_dict(cfg), allow_changes=False)
    assert state["progress"]["images_seen"] == 8


def test_eval_argument_mistakes_are_one_line_before_any_warning(data, backbone_file, tmp_path, capsys):
    """`wsl finetune eval CKPT data.val=PATH` said 'data.val=PATH has no manifest.json', and
    a bad override stopped the evaluation only after the LEAK WARNING."""
    cfg = config(data, backbone_file, tmp_path / "probe", "mode=linear", "probe.c_steps=2")
    run(cfg, to_dict(cfg))
    capsys.readouterr()
    probe = str(tmp_path / "probe" / "probe.pt")
    for argv, message in ((["eval", probe, str(data["val"]), "eval.image_size=3"], "'eval.image_size' (3)"),
                          (["eval", probe, f"data.val={data['val']}"], "SHARDS is the shard directory itself"),
                          (["eval", probe, str(data["val"]), "data.loader.imagesize=48"], "imagesize"),
                          (["eval", probe, str(tmp_path)], "SHARDS: ")):
        assert main(["finetune", *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and err.strip().count("\n") == 0 and "LEAK" not in err, err
    assert not (tmp_path / "probe" / "evals").exists()


@pytest.mark.slow
def test_a_redirected_log_keeps_the_order_things_were_said(data, backbone_file, tmp_path):
    """Redirected to a file (`wsl demo > log 2>&1`), stdout was block-buffered beside an
    unbuffered stderr: a stage's results landed after its later messages, next to the next
    stage's header. Two demo stages, as a user's shell (no PYTHONUNBUFFERED) runs them."""
    cfg = config(data, backbone_file, tmp_path / "probe", "mode=linear", "probe.c_steps=2")
    run(cfg, to_dict(cfg))
    stages = "; ".join(f"stage('eval {n}', ['finetune', 'eval', {str(tmp_path / 'probe' / 'probe.pt')!r}, "
                       f"{str(data['val'])!r}])" for n in (1, 2))
    env = {k: v for k, v in child_env().items() if k != "PYTHONUNBUFFERED"}
    with open(tmp_path / "log", "w") as log:
        subprocess.run([sys.executable, "-c", f"from launch.demo import stage; {stages}"], cwd=REPO, env=env,
                       stdout=log, stderr=subprocess.STDOUT, timeout=300, check=True)
    lines = (tmp_path / "log").read_text().splitlines()
    said = [n for n, line in enumerate(lines) if line.startswith(("== eval", f"{data['val']}: 24 images", "results: "))]
    assert [lines[n][:4] for n in said] == ["== e", str(data["val"])[:4], "resu"] * 2, lines


@pytest.mark.slow
def test_bn_linear_reaches_100_percent_on_separable_features(tmp_path):
    from finetune.linprobe import bn_linear
    x, y = separable(40, 4, 16, 2)
    cfg = make_config(FinetuneConfig, [], ["backbone=x", "run_dir=r", "data.train=t", "probe.epochs=20",
                                           "probe.head_batch_size=32", "probe.lr=0.5", "mode=linear"])
    head, _ = bn_linear(cfg, x, y, 4, torch.device("cpu"))
    with torch.no_grad():
        assert (head(torch.as_tensor(x)).argmax(1).numpy() == y).all()


def tv_features(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.fc = torch.nn.Identity()
    return model.eval()(x)


@pytest.mark.slow
def test_torchvision_state_dict_loads_and_gives_torchvision_features(tmp_path, capsys):
    torch.manual_seed(0)
    tv = torchvision.models.resnext50_32x4d(weights=None)
    for m in tv.modules():  # non-trivial BN statistics, so a mix-up of BN buffers would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    torch.save({"state_dict": {f"module.{k}": v for k, v in tv.state_dict().items()}}, tmp_path / "ddp.pth")
    x = torch.randn(2, 3, 64, 64)
    expected = tv_features(tv, x)
    for name in ("tv.pth", "ddp.pth"):
        source = backbone.read(tmp_path / name)
        assert source.model is None and source.pretrain_config is None
        ours = backbone.build(source, backbone.resolve_name(source, "resnext50_32x4d"), 7).eval()
        assert ours.fc.out_features == 7
        with torch.no_grad():
            assert torch.allclose(ours.forward_features(x), expected, atol=1e-5)
    with pytest.raises(ValueError, match="does not record its architecture: set 'model.name'"):
        backbone.resolve_name(backbone.read(tmp_path / "tv.pth"), "")


@pytest.mark.slow
def test_key_mismatch_is_one_error_listing_keys(tmp_path, data):
    state = torchvision.models.resnet50(weights=None).state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["layer4.2.bn3.running_var"]
    torch.save(state, tmp_path / "r50.pth")
    with pytest.raises(ValueError) as err:
        backbone.build(backbone.read(tmp_path / "r50.pth"), "resnext50_32x4d", 3)
    text = str(err.value)
    assert "\n" not in text and "1 missing key(s) (layer4.2.bn3.running_var)" in text
    assert "1 unexpected key(s) (extra.weight)" in text and "wrong shape" in text  # grouped vs plain convs
    for mode in ("full", "linear"):   # the error comes before the LEAK WARNING (overlap unknown) would
        proc = subprocess.run(cli("finetune", f"mode={mode}", f"backbone={tmp_path / 'r50.pth'}",
                                  "model.name=resnext_tiny", f"data.train={data['train']}", f"data.val={data['val']}",
                                  f"run_dir={tmp_path / 'run'}", *TINY),
                              cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr[-2000:]
        assert "does not fit resnext_tiny" in proc.stderr
        assert "unexpected key(s) (extra.weight, layer1.1.bn1.bias" in proc.stderr


@pytest.mark.slow
def test_bad_backbone_files_are_one_line(tmp_path, data):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    torch.save([1, 2], tmp_path / "list.pt")
    for path, message in ((tmp_path / "none.pt", "not found"), (tmp_path / "junk.pt", "is not a torch file"),
                          (tmp_path / "list.pt", "not a state dict")):
        proc = subprocess.run(cli("finetune", f"backbone={path}", f"data.train={data['train']}",
                                  f"run_dir={tmp_path / 'run'}", *TINY),
                              cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and message in proc.stderr, proc.stderr


def test_other_trainers_checkpoints_load_with_their_saved_args(tmp_path):
    """timm saves {"state_dict", "args": Namespace}, MAE and DeiT {"model", "args"}: a plain
    weights-only load refused both. Other objects are still refused, in one line."""
    weights = build_model("resnext_tiny", 5).state_dict()
    torch.save({"state_dict": weights, "args": argparse.Namespace(lr=0.1), "epoch": 3}, tmp_path / "timm.pth.tar")
    torch.save({"model": weights, "args": argparse.Namespace(lr=0.1)}, tmp_path / "mae.pth")
    trunk = {k for k in weights if not k.startswith("fc.")}
    for name in ("timm.pth.tar", "mae.pth"):
        assert set(backbone.read(tmp_path / name).state_dict) == trunk
    torch.save({"state_dict": weights, "day": datetime.date(2026, 1, 1)}, tmp_path / "dated.pth")
    with pytest.raises(ValueError, match="holds a datetime.date object, which a weights-only load refuses"):
        backbone.read(tmp_path / "dated.pth")


@pytest.mark.slow
def test_a_run_dir_is_not_reused_with_another_backbone_or_mode(data, backbone_file, tmp_path):
    """Other probe settings may reuse a probe's folder (and its cached features); another
    backbone or mode would replace its results and mix its W&B run, so they are refused."""
    run_dir = tmp_path / "probe"
    cfg = config(data, backbone_file, run_dir, "mode=linear", "probe.c_steps=2")
    run(cfg, to_dict(cfg))
    cfg = config(data, backbone_file, run_dir, "mode=linear", "probe.c_steps=3")
    run(cfg, to_dict(cfg))
    other = tmp_path / "other.pt"
    other.write_bytes(Path(backbone_file).read_bytes())
    for overrides, key in (((f"backbone={other}",), "backbone: "), (("mode=full",), "mode: 'linear' -> 'full'")):
        cfg = config(data, backbone_file, run_dir, "mode=linear", "probe.c_steps=3", *overrides)
        with pytest.raises(ValueError, match=f"holds a run with another config \\({key}"):
            run(cfg, to_dict(cfg))
    assert json.loads((run_dir / "results.json").read_text())["C"] is not None


@pytest.mark.slow
def test_labelled_sets_are_checked_before_the_run(tmp_path, shard_dir, data, backbone_file):
    """Multi-label training shards, or a val set of other classes, once failed only when the
    final evaluation read data.val, after the whole fine-tuning run."""
    for mode in ("full", "linear"):
        for sets, message in (((shard_dir, data["val"]), "data.val has"),
                              ((data["train"], shard_dir), "data.val has"),
                              ((shard_dir, None), "fine-tuning needs single-label shards")):
            run_dir = tmp_path / f"run-{mode}"
            val = [f"data.val={sets[1]}"] if sets[1] else []
            proc = subprocess.run(cli("finetune", f"mode={mode}", f"backbone={backbone_file}", f"data.train={sets[0]}",
                                      *val, f"run_dir={run_dir}", *TINY),
                                  cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=120)
            assert proc.returncode == 2 and message in proc.stderr, (mode, sets, proc.stderr[-2000:])
            assert proc.stderr.strip().count("\n") == 0 and not run_dir.exists()


@pytest.mark.slow
def test_config_errors(data):
    with pytest.raises(ValueError, match="'backbone' is required"):
        make_config(FinetuneConfig, [], ["run_dir=r", "data.train=t"])
    with pytest.raises(ValueError, match="must not exceed"):
        make_config(FinetuneConfig, [], ["backbone=b", "run_dir=r", "data.train=t", "probe.c_min=10", "probe.c_max=1"])
    with pytest.raises(ConfigError, match="mode"):
        make_config(FinetuneConfig, [], ["backbone=b", "run_dir=r", "data.train=t", "mode=probe"])
    proc = subprocess.run(cli("finetune", "eval", "only-one-arg"), cwd=REPO, env=child_env(), capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "usage: wsl finetune eval" in proc.stderr and "SHARDS" in proc.stderr


@pytest.mark.slow
def test_eval_refuses_a_pretrain_checkpoint_and_multilabel_shards(tmp_path, shard_dir, data, backbone_file):
    checkpoint.save({"model": build_model("resnext_tiny", 3).state_dict(), "config": {"model": {}}}, tmp_path, 8, 1)
    with pytest.raises(ValueError, match="not a `wsl finetune` checkpoint"):
        evaluate_checkpoint(str(checkpoint.path_for(tmp_path, 8)), str(data["val"]), [])
    cfg = config(data, backbone_file, tmp_path / "probe", "mode=linear", "probe.c_steps=2")
    run(cfg, to_dict(cfg))
    with pytest.raises(ValueError, match="multi-label data"):
        evaluate_checkpoint(str(tmp_path / "probe" / "probe.pt"), str(shard_dir), [])


def test_leak_guard(data, tmp_path):
    pre = tmp_path / "pretrain-shards"
    pre.mkdir()
    manifest = {"shards": [{"file": "train-000000.tar", "sha256": "ab"}]}
    shards.write_json(pre / "manifest.json", manifest)
    source = backbone.read(pretrained(tmp_path / "backbone.pt", pre))
    (warning,) = leak.check(source, [str(data["val"])])
    assert "dedup.against[].fingerprint" in warning and str(data["val"]) in warning
    val_print = shards.fingerprint(shards.read_manifest(data["val"]))
    manifest["dedup"] = {"against": [{"name": "other", "directory": "/x", "fingerprint": "0" * 64, "num_samples": 5},
                                     {"name": "val", "directory": str(data["val"]), "fingerprint": val_print,
                                      "num_samples": 24}],
                         "descriptor": "test", "threshold": 0.9, "removed": 0}
    shards.write_json(pre / "manifest.json", manifest)
    assert leak.check(source, [str(data["val"])]) == []
    assert leak.check(source, [str(data["train"])]), "filtered against val only, not train"
    torch.save(build_model("resnext_tiny", 0).state_dict(), tmp_path / "plain.pth")
    (unknown,) = leak.check(backbone.read(tmp_path / "plain.pth"), [str(data["val"])])
    assert "unknown" in unknown
    gone = backbone.read(pretrained(tmp_path / "moved.pt", tmp_path / "nowhere"))
    assert "not readable here" in leak.check(gone, [str(data["val"])])[0]


def test_split_holds_out_a_share_of_every_class():
    labels = np.array([0] * 10 + [1] * 5 + [2] * 1)
    fit_rows, held = split(labels, 0.2, 0)
    assert sorted(np.concatenate([fit_rows, held]).tolist()) == list(range(16))
    assert np.bincount(labels[held], minlength=3).tolist() == [2, 1, 0]


def test_single_label_metrics():
    logits = torch.tensor([[3., 1, 0], [3., 1, 0], [0., 3, 1], [0., 3, 1], [0., 3, 1], [0., 0, 3]])
    labels = torch.tensor([0, 0, 1, 2, 2, 2])
    assert confusion_matrix(logits, labels, 3).tolist() == [[2, 0, 0], [0, 1, 0], [0, 2, 1]]
    assert mean_per_class_accuracy(logits, labels, 3) == pytest.approx((1 + 1 + 1 / 3) / 3)
    assert mean_per_class_accuracy(logits, labels, 5) == pytest.approx((1 + 1 + 1 / 3) / 3)  # absent classes skipped
    (pair,) = most_confused(logits, labels, 3, count=5)
    assert pair == {"true": 2, "predicted": 1, "errors": 2, "share": pytest.approx(2 / 3)}


def one_and_two_ranks(args: list[str], tmp_path: Path, port: int) -> subprocess.CompletedProcess:
    """`wsl finetune ARGS` in one process (run_dir one/) and under torchrun on 2 ranks
    (run_dir two/); the 2-rank run's outcome."""
    one = subprocess.run(cli("finetune", *args, f"run_dir={tmp_path / 'one'}"), cwd=REPO, env=child_env(),
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                          "--master-port", str(port + os.getpid() % 1000), "-m", "launch.cli", "finetune", *args,
                          f"run_dir={tmp_path / 'two'}"], cwd=REPO, env=child_env(), capture_output=True,
                         text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    return two


@pytest.mark.timeout(660)
@pytest.mark.slow
def test_two_rank_probe_shares_the_extraction_and_equals_one_process(data, backbone_file, tmp_path):
    # 72 train and 24 val images over 2 ranks in batches of 16: the last batches wrap around.
    two = one_and_two_ranks([f"backbone={backbone_file}", f"data.train={data['train']}", f"data.val={data['val']}",
                             *TINY, "mode=linear", "probe.c_steps=5", "probe.c_max=10", "data.loader.batch_size=16"],
                            tmp_path, 30500)
    for part in ("train", "val"):
        a, b = (np.load(tmp_path / run / "features" / f"{part}.features.npy") for run in ("one", "two"))
        assert a.shape == b.shape and np.allclose(a, b, atol=1e-5)
        assert np.array_equal(*(np.load(tmp_path / run / "features" / f"{part}.labels.npy") for run in ("one", "two")))
    results = [json.loads((tmp_path / run / "results.json").read_text()) for run in ("one", "two")]
    assert results[0]["C"] == results[1]["C"] and results[0]["top1"] == results[1]["top1"]
    assert two.stderr.count("logreg sweep") == 1  # rank 0 alone trains the head


@pytest.mark.timeout(660)
@pytest.mark.slow
def test_bn_linear_on_augmented_views_cached_per_view(data, backbone_file, tmp_path):
    common = [f"backbone={backbone_file}", f"data.train={data['train']}", f"data.val={data['val']}",
              f"run_dir={tmp_path / 'probe'}", *TINY, "mode=linear", "probe.head=bn_linear", "probe.epochs=30",
              "probe.lr=0.5", "probe.views=3", "data.loader.min_scale=0.5"]
    first = subprocess.run(cli("finetune", *common), cwd=REPO, env=child_env(), capture_output=True, text=True,
                           timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    cached = tmp_path / "probe" / "features" / "train.features.npy"
    feats = np.load(cached)
    assert feats.shape == (3 * 72, build_model("resnext_tiny", 0).num_features)
    views = feats.reshape(3, 72, -1)
    assert not np.allclose(views[0], views[1]), "the views are the same crops"
    assert np.array_equal(*(np.load(tmp_path / "probe" / "features" / "train.labels.npy").reshape(3, 72)[[0, 2]]))
    results = json.loads((tmp_path / "probe" / "results.json").read_text())
    assert results["views"] == 3 and results["top1"] > 0.5
    stamp = cached.stat().st_mtime_ns
    again = subprocess.run(cli("finetune", *common, "probe.epochs=20"), cwd=REPO, env=child_env(),
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and cached.stat().st_mtime_ns == stamp, "the views were extracted again"


def test_views_need_the_bn_linear_head(data, backbone_file, tmp_path):
    with pytest.raises(ValueError, match="'probe.views' = 3 needs 'probe.head' = bn_linear"):
        config(data, backbone_file, tmp_path, "mode=linear", "probe.views=3")


@pytest.mark.timeout(660)
@pytest.mark.slow
def test_augmented_views_are_the_same_crops_on_two_ranks(data, backbone_file, tmp_path):
    # Three views over two ranks: rank 0 draws views 0 and 2, rank 1 view 1.
    one_and_two_ranks([f"backbone={backbone_file}", f"data.train={data['train']}", *TINY, "mode=linear",
                       "probe.head=bn_linear", "probe.epochs=3", "probe.views=3", "data.loader.min_scale=0.5"],
                      tmp_path, 31500)
    a, b = (np.load(tmp_path / run / "features" / "train.features.npy") for run in ("one", "two"))
    assert a.shape == b.shape == (3 * 72, a.shape[1]) and np.allclose(a, b, atol=1e-5)


def test_features_of_images_that_did_not_decode_are_left_out_in_every_view(capsys):
    """The loader skips and counts an undecodable image, so its rows keep label -1; the
    probe once stopped on them ('the loaders gave 297 of 300 samples')."""
    from finetune.features import decoded
    feats = np.arange(12, dtype=np.float32).reshape(6, 2)   # 2 views of 3 images
    labels = np.array([4, -1, 5, 4, -1, 5])
    x, y = decoded(feats, labels, 2, "set")
    assert y.tolist() == [4, 5, 4, 5] and x.tolist() == [[0, 1], [4, 5], [6, 7], [10, 11]]
    assert "1 image(s) did not decode and are left out" in capsys.readouterr().err
    whole = np.array([1, 2, 3])
    assert decoded(feats[:3], whole, 1, "set")[1] is whole
