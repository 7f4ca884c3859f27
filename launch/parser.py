"""The one `wsl` command: every stage a subcommand, every config YAML + dotted overrides."""
from __future__ import annotations

import argparse
import json

from data_tools.dedup.sets import RULE
from launch.cluster import add_options
from launch.stages import STAGES


def config_stages() -> dict[str, str]:
    """Every configurable stage -> "module:Class" of its config, from launch.stages.STAGES
    (the one list of stages: `wsl config` and `wsl launch` both read it)."""
    return {name: stage.config for name, stage in STAGES.items()}


SUB_COMMANDS = {"pretrain": ("train", "export"), "finetune": ("train", "eval")}


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", action="append", default=[], metavar="YAML",
                        help="config file; several are merged in order")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value",
                        help="dotted overrides, applied after the config files")


def dedup_flags(args) -> list[str]:
    """`wsl data dedup`'s flags as config overrides (also what `wsl launch data dedup` submits)."""
    # JSON-quoted, so a value YAML would misread ("0755", "2024_01", "yes") stays the string given.
    given = {"train": args.train, "out": args.out, "apply": args.apply, "part": args.part, "against": args.against}
    flags = [f"{key}={json.dumps(value)}" for key, value in given.items() if value]
    flags += ["self_dedup=true"] if args.self else []
    flags += ["merge=true"] if args.merge else []
    return flags


def add_stage_parsers(parser: argparse.ArgumentParser, tree: dict, words: tuple = ()) -> None:
    """`wsl config data build ...`: one sub-command per word of each STAGES key."""
    commands = parser.add_subparsers(dest=f"stage_word_{len(words)}", required=True, metavar="STAGE")
    for word, rest in tree.items():
        stage = " ".join((*words, word))
        p = commands.add_parser(word, help=f"`wsl {stage} ...` stages" if rest else f"the config of `wsl {stage}`")
        if rest:
            add_stage_parsers(p, rest, (*words, word))
        else:
            add_config_args(p)
            p.set_defaults(handler="config", stage=stage)


def stage_tree() -> dict:
    """{'data': {'build': {}}, 'pretrain': {}} from the STAGES keys."""
    tree: dict = {}
    for stage in config_stages():
        node = tree
        for word in stage.split():
            node = node.setdefault(word, {})
    return tree


def add_training_stage(stages, name: str, what: str):
    """A stage whose default command is `train`; returns its sub-command list."""
    parser = stages.add_parser(name, help=f"{what}; `wsl {name} -c A.yaml k=v` is `wsl {name} train ...`")
    commands = parser.add_subparsers(dest="command", required=True)
    others = [c for c in SUB_COMMANDS[name] if c != "train"]
    # `wsl NAME --help` shows this parser (with_default_command): the options a run takes.
    p = commands.add_parser("train", help="the default command: train; a run directory resumes by itself",
                            usage=f"wsl {name} [train] [-c YAML ...] [key.sub=value ...]",
                            description=f"{what[0].upper()}{what[1:]}; a run directory resumes by itself.",
                            epilog=f"Every key with its default, comment and range: wsl config {name}. Other "
                                   f"commands: {', '.join(f'wsl {name} {c} --help' for c in others)}.")
    add_config_args(p)
    p.set_defaults(handler=f"{name} train")
    return commands


def versions() -> str:
    """Ours and the libraries' whose versions a bug report needs, read without importing them."""
    from importlib.metadata import PackageNotFoundError, version
    found = []
    for name in ("wsl", "torch", "torchvision", "nvidia-dali-cuda120", "webdataset", "faiss-cpu", "submitit", "wandb"):
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            found.append(f"{name} not installed")
    return "; ".join(found)


class PrintVersions(argparse.Action):
    """--version, read only when asked: looking up eight packages' metadata costs 40 ms,
    which every `wsl` start-up (and every in-process demo stage) paid as argparse's
    version string."""

    def __call__(self, parser, namespace, values, option_string=None):
        print(versions())
        parser.exit()


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wsl", description=__doc__)
    parser.add_argument("--version", action=PrintVersions, nargs=0, help="print the versions a bug report needs")
    stages = parser.add_subparsers(dest="stage", required=True)

    data = stages.add_parser("data", help="build, merge, verify and inspect shard datasets")
    data_cmds = data.add_subparsers(dest="command", required=True)
    p = data_cmds.add_parser("build", help="tagged images -> vocabulary -> WebDataset shards")
    add_config_args(p)
    p.add_argument("--part", metavar="i/N", help="build only slice i of N (e.g. a SLURM array task)")
    p.set_defaults(handler="data build")
    p = data_cmds.add_parser("convert", help="ImageNet, CUB-200-2011 or Places365 as distributed -> shards")
    p.add_argument("dataset", choices=("imagenet", "cub", "places"))
    p.add_argument("root", help="the dataset's folder as distributed")
    p.add_argument("output", help="the shard directory")
    p.add_argument("--split", help="imagenet: train|val, cub: train|test, places: train|val (default: train)")
    p.add_argument("--part", metavar="i/N", help="convert only slice i of N; then `wsl data merge OUTPUT`")
    add_config_args(p)
    p.set_defaults(handler="data convert")
    p = data_cmds.add_parser("merge", help="join the manifests of a --part i/N build")
    p.add_argument("directory")
    p.add_argument("--parts", type=int, metavar="N", help="merge the parts of the --part i/N build with this N "
                                                         "(needed only when parts of builds with several N are there)")
    p.set_defaults(handler="data merge")
    p = data_cmds.add_parser("verify", help="check every shard, sample and image against the manifest")
    p.add_argument("directory")
    p.add_argument("--workers", type=int, default=0, help="processes (0: one per core)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler="data verify")
    p = data_cmds.add_parser("dedup", help="find (and with --apply remove) training images that copy "
                                           "evaluation images")
    add_config_args(p)
    p.add_argument("--train", metavar="DIR", help="training shards (a `wsl data build` output)")
    p.add_argument("--against", metavar="[NAME=]DIR", action="append",
                   help=f"evaluation shards to filter against; repeat for several sets. {RULE}")
    p.add_argument("--out", metavar="DIR", help="matches.jsonl, summary.json, report.html")
    p.add_argument("--apply", metavar="OUT", help="also write the filtered training shards here")
    p.add_argument("--self", action="store_true", help="also remove near-duplicates within the training set")
    p.add_argument("--part", metavar="i/N", help="scan only training shards i, i+N, ... (a SLURM array task)")
    p.add_argument("--merge", action="store_true", help="join the finished --part results (scan nothing)")
    p.set_defaults(handler="data dedup", flags=dedup_flags)
    p = data_cmds.add_parser("index", help="add sample tables (and the resampling fit) to shards of an older build")
    p.add_argument("directory")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler="data index")
    p = data_cmds.add_parser("stats", help="label frequency table and Zipf plot")
    p.add_argument("directory")
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--plot", help="PNG path (default: DIR/zipf.png)")
    p.set_defaults(handler="data stats")

    pretrain_cmds = add_training_stage(stages, "pretrain", "train a ResNeXt on hashtag shards")
    p = pretrain_cmds.add_parser("export", help="write the backbone of a run's newest checkpoint, for fine-tuning",
                                 description="Write the backbone (every weight but the classifier) of RUN_DIR's "
                                             "newest checkpoint, with its model name and config.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a `wsl pretrain` run directory")
    p.add_argument("out", nargs="?", metavar="OUT.pt", help="where to write it (default: RUN_DIR/backbone.pt; "
                                                             "a folder: OUT/backbone.pt)")
    p.set_defaults(handler="pretrain export")

    p = stages.add_parser("config", help="print a stage's resolved config with each key's comment and range",
                          description="Print the config a stage would run with, as YAML: defaults, then the "
                                      "config files, then the overrides; each key with its comment and range. "
                                      f"Stages: {', '.join(config_stages())}.")
    add_stage_parsers(p, stage_tree())

    p = stages.add_parser("launch", help="run a stage as a job: here, or on SLURM through submitit "
                                         "(wsl launch [options] STAGE [stage args])",
                          usage="wsl launch [options] STAGE [options] -- [stage args]")
    add_options(p)
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="STAGE ...",
                   help=f"the stage ({', '.join(config_stages())}) and its own arguments")
    p.set_defaults(handler="launch")

    finetune_cmds = add_training_stage(stages, "finetune", "full fine-tuning or a linear probe from a backbone")
    p = finetune_cmds.add_parser("eval", help="score a fine-tuned checkpoint or probe.pt on labelled shards",
                                 description="Top-1, top-5, mean per-class accuracy and the most-confused class "
                                             "pairs of CHECKPOINT on SHARDS, into evals/SET.json beside the "
                                             "checkpoint, the console and W&B; overrides change the checkpoint's "
                                             "config for this evaluation (eval.image_size=288: a larger crop, the "
                                             "resize scaled alike).")
    p.add_argument("checkpoint", metavar="CHECKPOINT")
    p.add_argument("shards", metavar="SHARDS", help="a single-label shard directory")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value")
    p.set_defaults(handler="finetune eval")

    p = stages.add_parser("demo", help="the whole pipeline on generated data, on CPU, in minutes: does "
                                       "hashtag pretraining beat random init in transfer?")
    p.add_argument("--workdir", default="demo", help="everything it writes goes here (default: demo)")
    p.add_argument("--fast", action="store_true", help="a smaller corpus and schedule (what CI runs)")
    p.add_argument("--seed", type=int, default=0, help="corpus, weights and data order (default: 0)")
    p.set_defaults(handler="demo")
    return parser


def with_default_command(argv: list[str]) -> list[str]:
    """`wsl pretrain -c a.yaml k=v` means `wsl pretrain train -c a.yaml k=v`, and `wsl
    pretrain --help` shows what a run takes (finetune alike)."""
    commands = SUB_COMMANDS.get(argv[0]) if argv else None
    if commands and (argv[1:2] == [] or argv[1] not in commands):  # `wsl pretrain --help` too
        return [argv[0], "train", *argv[1:]]
    return argv


def parse(argv: list[str]) -> argparse.Namespace:
    """`wsl ARGV` as arguments; `args.handler` names the command that runs them."""
    parser = make_parser()
    # argparse gives a '*' positional only the words before the first option, so dotted
    # overrides after one (`wsl data convert cub ROOT OUT --split test key=value`) come back here.
    args, rest = parser.parse_known_args(with_default_command(argv))
    if rest and hasattr(args, "overrides") and all("=" in a and not a.startswith("-") for a in rest):
        args.overrides += rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return args
