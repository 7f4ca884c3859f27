"""Every command README.md shows runs as written: on tiny generated data in place of its
/data paths, with overrides appended only to shrink the training runs to seconds on a CPU.
Commands that need a cluster or 8 GPUs are parsed and their configs resolved."""
from __future__ import annotations

import json
import re
import shutil

import pytest
from helpers import REPO, cub_tree, imagenet_flat_val, imagenet_train, places_tree, write_solution

from launch.cli import main
from launch.parser import config_stages, make_parser, with_default_command
from pretrain import checkpoint

SIZES = ["device=cpu", "data.loader.batch_size=8", "data.loader.image_size=32", "data.loader.resize_size=36",
         "data.loader.workers=1", "data.loader.backend=pil", "train.bottleneck_seconds=0"]
# Appended to the README's training commands (by their first words): seconds, not hours.
SHRINK = {
    "wsl pretrain -c": [*SIZES, "train.total_images=32", "checkpoint.every_images=32", "optim.warmup_images=16"],
    "wsl finetune -c configs/finetune/imagenet.yaml": [*SIZES, "train.total_images=16", "checkpoint.every_images=16",
                                                       "optim.warmup_images=8", "eval.every_images=16"],
    "wsl finetune -c configs/finetune/cub.yaml": [*SIZES, "probe.c_steps=3"],
}
# Need a SLURM cluster, 8 GPUs or the parts of an array build: parsed and resolved only.
NOT_RUN = ("torchrun ", "wsl launch ", " --part ", "wsl data merge ")


def readme_commands() -> list[str]:
    """The `wsl` and `torchrun` lines of README's bash blocks, continuations joined, comments
    and optional `[...]` flags dropped."""
    text = (REPO / "README.md").read_text()
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = re.sub(r"\s+#\s.*$", "", re.sub(r"\s\[[^]]*\]", "", line)).strip()
            if line.startswith(("wsl ", "torchrun ")):
                lines.append(line)
    return lines


def stage_argv(command: str) -> list[str]:
    """The `wsl` arguments of a README line: a torchrun line's, a `wsl launch` line's stage
    and its arguments; an array part as the first of its parts."""
    words = command.replace("$SLURM_ARRAY_TASK_ID", "0").split()
    words = words[words.index("launch.cli") + 1:] if words[0] == "torchrun" else words[1:]
    if words[0] == "launch":   # wsl launch [options] STAGE -- ARGS
        start = next(i for i, word in enumerate(words) if word in ("data", "pretrain", "finetune"))
        split = words.index("--")
        words = [*words[start:split], *words[split + 1:]]
    return words


def resolves(argv: list[str]) -> None:
    """The line parses; a configured stage's config resolves (keys, types, ranges) as
    `wsl config STAGE` with the line's config files and overrides."""
    args, rest = make_parser().parse_known_args(with_default_command(argv))
    assert all("=" in word for word in rest), argv
    stage = " ".join(argv[:2] if argv[0] == "data" else argv[:1])
    if stage in config_stages():
        files = [word for path in args.config for word in ("-c", path)]
        assert main(["config", *stage.split(), *files, *args.overrides, *rest]) == 0, argv


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    """What README's paths stand for: a hashtag corpus, ImageNet, CUB-200-2011 and Places365
    trees as distributed, and a CUB train split (which no README line converts)."""
    from helpers import write_corpus

    from data_tools.common.config import build as make_config
    from data_tools.convert import ConvertConfig, convert
    root = tmp_path_factory.mktemp("readme")
    imagenet = root / "imagenet"
    imagenet_train(imagenet)
    imagenet_flat_val(imagenet)
    write_solution(imagenet)
    cub_tree(root / "CUB_200_2011")
    places_tree(root / "places365")
    convert(make_config(ConvertConfig, [], ["dataset=cub", f"root={root / 'CUB_200_2011'}", "split=train",
                                            f"output={root / 'cub-train'}", "progress=false", "workers=1"]))
    return {"tags.jsonl": write_corpus(root / "corpus", 120), "/data/imagenet": imagenet,
            "/data/CUB_200_2011": root / "CUB_200_2011", "/data/places365": root / "places365",
            "/data/cub-train": root / "cub-train"}


def substitute(command: str, paths: dict) -> str:
    """README's paths -> the tiny ones: a whole word, a value after `=`, or a folder's prefix."""
    pattern = "|".join(re.escape(k) for k in sorted(paths, key=len, reverse=True))
    return re.sub(rf"(?<![\w/.-])({pattern})(?![\w.-])", lambda m: str(paths[m.group(1)]), command)


@pytest.mark.slow
def test_every_readme_command_runs_as_written(inputs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)   # README's config paths are relative to the checkout
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    paths = dict(inputs)
    for name in ("ig17k", "in1k", "in1k-train", "in1k-val", "cub-test", "places-val", "ig17k-dedup", "ig17k-clean",
                 "ig17k-val"):
        paths[f"/data/{name}"] = tmp_path / name
    paths.update({"/data/imagenet/train": paths["/data/imagenet"] / "train", "/data/old-set": tmp_path / "ig17k",
                  "demo/shards": tmp_path / "ig17k", "runs/tiny": tmp_path / "runs" / "tiny",
                  "runs/ig/backbone.pt": tmp_path / "runs" / "tiny" / "backbone.pt",
                  "/ckpt/ft-in1k": tmp_path / "ckpt" / "ft-in1k", "/ckpt/probe-cub": tmp_path / "ckpt" / "probe-cub",
                  "/ckpt/ig17k": tmp_path / "ckpt" / "ig17k"})
    commands = readme_commands()
    assert len(commands) >= 20 and any("finetune eval" in c for c in commands)
    ran = []
    for command in commands:
        argv = stage_argv(substitute(command, paths))
        if any(part in f"{command} " for part in NOT_RUN):
            resolves(argv)
            continue
        if argv[:2] == ["finetune", "eval"]:   # README names the last checkpoint of a full ImageNet run
            shutil.copy(checkpoint.latest(paths["/ckpt/ft-in1k"]), argv[2])
        extra = next((v for k, v in SHRINK.items() if command.startswith(k)), [])
        status = main([*argv, *extra])
        err = capsys.readouterr().err
        assert status == 0, f"{command}\n{err[-3000:]}"
        ran.append(command)
    assert len(ran) >= 15, ran
    (record,) = (paths["/ckpt/ft-in1k"] / "evals").glob("in1k-val-*.json")
    assert json.loads(record.read_text())["image_size"] == 288


def test_stage_help_shows_the_options_a_run_takes(capsys):
    """`wsl pretrain --help` listed only `train` and `export`: -c and the overrides were
    shown by `wsl pretrain train --help` alone."""
    for stage, other in (("pretrain", "export"), ("finetune", "eval")):
        with pytest.raises(SystemExit) as stop:
            main([stage, "--help"])
        out = capsys.readouterr().out
        assert stop.value.code == 0 and "--config YAML, -c YAML" in out and "key.sub=value" in out, out
        assert f"wsl {stage} {other} --help" in out and f"wsl config {stage}" in out
