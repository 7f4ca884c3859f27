"""The one `wsl` command: every stage a subcommand, every config YAML + dotted overrides."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from launch.config import ConfigError
from launch.config import build as make_config

USER_ERRORS = (ConfigError, FileNotFoundError, NotADirectoryError, ValueError)


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", action="append", default=[], metavar="YAML",
                        help="config file; several are merged in order")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value",
                        help="dotted overrides, applied after the config files")


def data_build(args) -> int:
    from data_tools.build import BuildConfig, build, summary
    overrides = args.overrides + ([f"part={args.part}"] if args.part else [])
    cfg = make_config(BuildConfig, args.config, overrides)
    manifest = build(cfg)
    print(summary(manifest))
    if manifest["num_samples"] == 0:
        print("wsl: error: no usable image in the input", file=sys.stderr)
        return 1
    return 0


def data_merge(args) -> int:
    from data_tools.build import merge, summary
    print(summary(merge(args.directory)))
    return 0


def data_verify(args) -> int:
    from data_tools.verify import verify
    problems = verify(args.directory, workers=args.workers, progress=not args.quiet)
    if problems:
        print(f"{len(problems)} problem(s) in {args.directory}; the first:", file=sys.stderr)
        for line in problems[:20]:
            print(f"  {line}", file=sys.stderr)
        return 1
    print(f"{args.directory}: all shards, samples and images check out")
    return 0


def data_stats(args) -> int:
    from data_tools.stats import frequency_table, zipf_plot
    print(frequency_table(args.directory, args.top))
    plot = zipf_plot(args.directory, args.plot or Path(args.directory) / "zipf.png")
    print(f"Zipf plot: {plot}")
    return 0


def pretrain(args) -> int:
    if args.overrides[:1] == ["export"]:
        return pretrain_export(args.overrides[1:])
    from launch.config import to_dict
    from pretrain.config import PretrainConfig
    from pretrain.train import run
    cfg = make_config(PretrainConfig, args.config, args.overrides)
    run(cfg, to_dict(cfg))
    return 0


def pretrain_export(rest: list[str]) -> int:
    from pretrain.train import export_run
    if len(rest) not in (1, 2):
        raise ConfigError("usage: wsl pretrain export RUN_DIR [OUT.pt]")
    print(f"backbone written to {export_run(rest[0], rest[1] if len(rest) == 2 else None)}")
    return 0


def finetune(args) -> int:
    if args.overrides[:1] == ["eval"]:
        return finetune_eval(args.overrides[1:])
    from finetune.config import FinetuneConfig
    from finetune.train import run
    from launch.config import to_dict
    cfg = make_config(FinetuneConfig, args.config, args.overrides)
    run(cfg, to_dict(cfg))
    return 0


def finetune_eval(rest: list[str], out: str | None = None) -> int:
    """Overrides change the checkpoint's own config for this evaluation only."""
    from finetune.config import FinetuneConfig
    from finetune.evaluate import load_model, run_eval
    from launch.config import from_dict, parse_override, set_dotted
    if len(rest) < 2 or "=" in rest[0] or "=" in rest[1]:
        raise ConfigError("usage: wsl finetune eval CHECKPOINT SHARDS [key.sub=value ...]")
    model, config, images_seen = load_model(rest[0])
    for text in rest[2:]:
        set_dotted(config, *parse_override(text))
    run_eval(model, from_dict(FinetuneConfig, config), config, images_seen, rest[0], rest[1], out)
    return 0


def demo(args) -> int:
    from launch.demo import run_demo
    return run_demo(Path(args.workdir))


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wsl", description=__doc__)
    stages = parser.add_subparsers(dest="stage", required=True)

    data = stages.add_parser("data", help="build, merge, verify and inspect shard datasets")
    data_cmds = data.add_subparsers(dest="command", required=True)
    p = data_cmds.add_parser("build", help="tagged images -> vocabulary -> WebDataset shards")
    add_config_args(p)
    p.add_argument("--part", metavar="i/N", help="build only slice i of N (e.g. a SLURM array task)")
    p.set_defaults(func=data_build)
    p = data_cmds.add_parser("merge", help="join the manifests of a --part i/N build")
    p.add_argument("directory")
    p.set_defaults(func=data_merge)
    p = data_cmds.add_parser("verify", help="check every shard, sample and image against the manifest")
    p.add_argument("directory")
    p.add_argument("--workers", type=int, default=0, help="processes (0: one per core)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=data_verify)
    p = data_cmds.add_parser("stats", help="label frequency table and Zipf plot")
    p.add_argument("directory")
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--plot", help="PNG path (default: DIR/zipf.png)")
    p.set_defaults(func=data_stats)

    p = stages.add_parser("pretrain", help="train a ResNeXt on hashtag shards (`wsl pretrain export RUN_DIR` "
                                           "writes its backbone)")
    add_config_args(p)
    p.set_defaults(func=pretrain)

    p = stages.add_parser("finetune", help="full fine-tuning or a linear probe from a backbone (`wsl finetune "
                                           "eval CHECKPOINT SHARDS` scores a result)")
    add_config_args(p)
    p.set_defaults(func=finetune)

    p = stages.add_parser("demo", help="the whole pipeline on generated data, on CPU, in minutes")
    p.add_argument("--workdir", default="demo")
    p.set_defaults(func=demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as err:
        if os.environ.get("WSL_DEBUG"):
            raise
        print(f"wsl: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("wsl: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
