"""The one `wsl` command: every stage a subcommand, every config YAML + dotted overrides."""
from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from pathlib import Path

from data_tools.common import writable
from data_tools.common.config import ConfigError
from data_tools.common.config import build as make_config
from data_tools.dedup.sets import RULE
from pretrain.stop import Interrupted, NonFiniteLoss

USER_ERRORS = (ConfigError, FileNotFoundError, NotADirectoryError, PermissionError, ValueError)

def user_errors() -> tuple:
    """USER_ERRORS, and W&B's UsageError (log.wandb=online without an API key) once W&B is loaded."""
    wandb = sys.modules.get("wandb")
    return USER_ERRORS + ((wandb.errors.UsageError,) if wandb is not None else ())


def describe(err: Exception) -> str:
    if type(err).__module__.startswith("wandb"):
        return f"W&B: {err} (log.wandb=offline logs without an account)"
    return str(err)


def config_stages() -> dict[str, str]:
    """Every configurable stage -> "module:Class" of its config, from launch.stages.STAGES
    (the one list of stages: `wsl config` and `wsl launch` both read it)."""
    from launch.stages import STAGES
    return {name: stage.config for name, stage in STAGES.items()}


SUB_COMMANDS = {"pretrain": ("train", "export"), "finetune": ("train", "eval")}


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", action="append", default=[], metavar="YAML",
                        help="config file; several are merged in order")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value",
                        help="dotted overrides, applied after the config files")


def data_build(args) -> int:
    from data_tools.build import BuildConfig, build, summary
    overrides = args.overrides + ([f"part={args.part}"] if args.part else [])
    cfg = make_config(BuildConfig, args.config, overrides)
    print(summary(build(cfg)))
    return 0


def data_convert(args) -> int:
    import json

    from data_tools.build import summary
    from data_tools.convert import ConvertConfig, convert, describe
    # JSON-quoted, so a path YAML would misread ("a: b", "yes", "123") stays the string given.
    given = {"dataset": args.dataset, "root": args.root, "output": args.output, "split": args.split, "part": args.part}
    overrides = [f"{key}={json.dumps(value)}" for key, value in given.items() if value is not None]
    manifest = convert(make_config(ConvertConfig, args.config, overrides + args.overrides))
    print(summary(manifest))
    print(describe(manifest))
    if manifest["num_samples"] == 0:
        print("wsl: error: no usable image in the input", file=sys.stderr)
        return 1
    return 0


def data_merge(args) -> int:
    from data_tools.build import merge, summary
    print(summary(merge(args.directory, args.parts)))
    return 0


def data_verify(args) -> int:
    from data_tools.format.verify import verify
    problems = verify(args.directory, workers=args.workers, progress=not args.quiet)
    if problems:
        print(f"{len(problems)} problem(s) in {args.directory}; the first:", file=sys.stderr)
        for line in problems[:20]:
            print(f"  {line}", file=sys.stderr)
        return 1
    print(f"{args.directory}: all shards, samples and images check out")
    return 0


def dedup_flags(args) -> list[str]:
    """`wsl data dedup`'s flags as config overrides (also what `wsl launch data dedup` submits)."""
    import json
    # JSON-quoted, so a value YAML would misread ("0755", "2024_01", "yes") stays the string given.
    given = {"train": args.train, "out": args.out, "apply": args.apply, "part": args.part, "against": args.against}
    flags = [f"{key}={json.dumps(value)}" for key, value in given.items() if value]
    flags += ["self_dedup=true"] if args.self else []
    flags += ["merge=true"] if args.merge else []
    return flags


def data_dedup(args) -> int:
    from data_tools.dedup.run import DedupConfig, run
    cfg = make_config(DedupConfig, args.config, args.overrides + dedup_flags(args))
    summary = run(cfg)
    if summary is None:
        return 0
    verify = summary["verify"]
    if verify["enabled"] and verify.get("method") == "local":
        rule = f"{verify['pairs_aligned']} shortlisted pairs verified by local features"
    elif verify["enabled"]:
        rule = f"{verify['pairs_aligned']} pairs from {verify['candidates']:.2f} aligned, threshold {verify['threshold']:.2f}"
    else:
        rule = f"threshold {summary['threshold']:.4f}"
    print(f"{summary['removed']} of {summary['train']['samples']} training samples match "
          f"({rule}, {summary['descriptor']}); "
          f"{summary['train']['undecodable']} undecodable; report: {Path(cfg.out) / 'report.html'}")
    if cfg.apply:
        print(f"filtered shards: {cfg.apply} ({summary['apply']['num_samples']} samples)")
    return 0


def data_index(args) -> int:
    from data_tools.format import resampling, tables
    written = tables.index(args.directory, progress=not args.quiet)
    fitted = resampling.fit(args.directory, progress=not args.quiet)
    print(f"{args.directory}: {written} sample table(s) written; resampling fitted over {fitted['images']} images")
    return 0


def data_stats(args) -> int:
    from data_tools.format.stats import frequency_table, zipf_plot
    plot = args.plot or Path(args.directory) / "zipf.png"
    table = frequency_table(args.directory, args.top)
    writable.check_file(plot, "Zipf plot", "--plot PATH writes it elsewhere")
    print(table)
    plot = zipf_plot(args.directory, plot)
    print(f"Zipf plot: {plot}")
    return 0


def pretrain(args) -> int:
    from data_tools.common.config import to_dict
    from pretrain.config import PretrainConfig
    cfg = make_config(PretrainConfig, args.config, args.overrides)
    limit_threads(cfg)
    check_pretrain(cfg)
    from pretrain.train import run  # torch: after the checks, which need a second without it
    run(cfg, to_dict(cfg))
    return 0


def limit_threads(cfg) -> None:
    """The rank's thread budget, set before the checks load torch: OpenMP reads its wait
    policy only then (the run's first log line says the budget)."""
    from data_tools.common import threads
    threads.limit(cfg.threads, cfg.data.loader.worker_count())


def check_pretrain(cfg, device: bool = True) -> None:
    """What the config says about the world (files, data, device), checked before the run
    directory is made: each a one-line error instead of a traceback minutes in. `device`:
    also that the device asked for is here (not on a login node submitting to SLURM)."""
    check_model_name(cfg.model.name)
    check_training(cfg, device)


def check_finetune(cfg, device: bool = True) -> None:
    """check_pretrain's checks for labelled data, which would otherwise fail only when the
    final evaluation reads data.val, after the whole run."""
    if cfg.model.name:  # "": the name the backbone file records
        check_model_name(cfg.model.name)
    if not Path(cfg.backbone).is_file():
        raise ConfigError(f"config key 'backbone': file not found: {cfg.backbone}")
    train = check_training(cfg, device)
    if train["label_type"] != "single":
        raise ConfigError(f"config key 'data.train': {cfg.data.train} holds multi-label data; fine-tuning needs "
                          "single-label shards (`wsl data build` from an ImageFolder, or `wsl data convert`)")


def check_model_name(name: str) -> None:
    from pretrain.architectures import MODELS
    if name not in MODELS:
        raise ConfigError(f"config key 'model.name' = {name!r} is not a model (known: {', '.join(MODELS)})")


def check_training(cfg, device: bool) -> dict:
    """The run directory, the data sets and the loss against each other, the device; the
    training set's manifest. The device goes last: checking it loads torch."""
    if Path(cfg.run_dir).exists() and not Path(cfg.run_dir).is_dir():
        raise ConfigError(f"config key 'run_dir' = {cfg.run_dir} is a file; give a directory")
    writable.check_folder(cfg.run_dir, "run_dir")
    train = read_shards("data.train", cfg.data.train)
    if cfg.data.val:
        val = read_shards("data.val", cfg.data.val)
        if (val["label_type"], val["num_classes"]) != (train["label_type"], train["num_classes"]):
            raise ConfigError(f"data.val has {val['num_classes']} {val['label_type']}-label classes, data.train "
                              f"{train['num_classes']} {train['label_type']}-label: build both with one vocabulary")
    wanted = {"softmax": "multi", "sigmoid": "multi", "ce": "single"}.get(cfg.train.loss, train["label_type"])
    if wanted != train["label_type"]:
        raise ConfigError(f"config key 'train.loss' = {cfg.train.loss} needs {wanted}-label data, but data.train "
                          f"is {train['label_type']}-label (train.loss=auto picks the right one)")
    if device:
        from data_tools.common import dist
        try:
            dist.pick_device(cfg.device, dist.read_env())
        except RuntimeError as err:  # no GPU for device=cuda, a half-set torchrun environment
            raise ConfigError(str(err)) from None
    return train


def read_shards(key: str, directory: str) -> dict:
    from data_tools.format import shards
    try:
        return shards.read_manifest(directory)
    except FileNotFoundError as err:
        raise ConfigError(f"config key '{key}': {err}") from None


def pretrain_export(args) -> int:
    from pretrain.train import export_run
    if not Path(args.run_dir).is_dir():
        raise ConfigError(f"run directory not found: {args.run_dir}")
    out = Path(args.out) if args.out else None
    if out is not None and out.is_dir():
        out = out / "backbone.pt"
    if out is not None and not out.parent.is_dir():
        raise ConfigError(f"cannot write {out}: folder {out.parent} does not exist")
    print(f"backbone written to {export_run(args.run_dir, out and str(out))}")
    return 0


def show_config(args) -> int:
    """`wsl config STAGE ...`: the resolved config with each key's comment and range."""
    from data_tools.common.config import annotated_yaml, check_sections
    module, name = config_stages()[args.stage].split(":")
    cls = getattr(importlib.import_module(module), name)
    cfg = make_config(cls, args.config, args.overrides, check=False)
    print(annotated_yaml(cfg, f"wsl {args.stage}: defaults, then {' '.join(args.config) or 'no config file'}, "
                              f"then {' '.join(args.overrides) or 'no override'}"))
    try:
        check_sections(cfg)
    except ConfigError as err:  # a config still being written (no run_dir yet) is worth showing
        print(f"# not runnable as is: {err}")
    return 0


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
            p.set_defaults(func=show_config, stage=stage)


def stage_tree() -> dict:
    """{'data': {'build': {}}, 'pretrain': {}} from the STAGES keys."""
    tree: dict = {}
    for stage in config_stages():
        node = tree
        for word in stage.split():
            node = node.setdefault(word, {})
    return tree


def launch(args) -> int:
    from launch.submit import launch as submit_stage
    return submit_stage(args)


def finetune(args) -> int:
    from data_tools.common.config import to_dict
    from finetune.config import FinetuneConfig
    cfg = make_config(FinetuneConfig, args.config, args.overrides)
    limit_threads(cfg)
    check_finetune(cfg)
    from finetune.train import run  # torch: after the checks
    run(cfg, to_dict(cfg))
    return 0


def finetune_eval(args) -> int:
    return evaluate_checkpoint(args.checkpoint, args.shards, args.overrides)


def evaluate_checkpoint(checkpoint: str, shards: str, overrides: list[str], out: str | None = None) -> int:
    """Overrides change the checkpoint's own config for this evaluation only. The results go
    to OUT/evals/ (OUT: the checkpoint's folder), one file per evaluated set and overrides,
    beside the run's own record (results.json), which they never replace."""
    from data_tools.common import threads
    from data_tools.common.config import from_dict
    from data_tools.format.shards import read_manifest
    from finetune.config import FinetuneConfig
    from finetune.evaluate import eval_record_path, load_model, run_eval
    from finetune.leak import check_checkpoint
    if "=" in shards and not Path(shards).exists():
        key, path = shards.split("=", 1)
        raise ConfigError(f"SHARDS is the shard directory itself, not an override ({key}=...): "
                          f"wsl finetune eval CHECKPOINT {path or 'SHARDS'} [key=value ...]")
    model, config, images_seen = load_model(checkpoint)
    apply_eval_overrides(config, overrides)
    cfg = from_dict(FinetuneConfig, config)
    threads.limit(cfg.threads, cfg.data.loader.worker_count())
    try:
        manifest = read_manifest(shards)
    except FileNotFoundError as err:
        raise ConfigError(f"SHARDS: {err}") from None
    check_checkpoint(config, shards)   # after every check that can stop the evaluation
    run_dir = Path(out) if out else Path(checkpoint).parent
    run_eval(model, cfg, config, images_seen, checkpoint, shards, run_dir,
             eval_record_path(run_dir, shards, manifest, overrides), overrides)
    return 0


def apply_eval_overrides(config: dict, overrides: list[str]) -> None:
    """`overrides` on a checkpoint's config. A larger crop given alone ("FixRes",
    data.loader.image_size=288) comes from an image resized alike, as eval.image_size does:
    the trained resize_size would be smaller than the crop."""
    from data_tools.common.config import parse_override, set_dotted
    loader = config["data"]["loader"]
    trained = loader["image_size"], loader["resize_size"]
    given = set()
    for text in overrides:
        keys, value = parse_override(text)
        set_dotted(config, keys, value)
        given.add(".".join(keys))
    if ("data.loader.image_size" in given and "data.loader.resize_size" not in given
            and isinstance(loader["image_size"], int)):
        loader["resize_size"] = round(trained[1] * loader["image_size"] / trained[0])


def demo(args) -> int:
    # Its stages run in this process, after torch is loaded: OpenMP reads its wait policy
    # only then (threads.limit sets the rest per stage).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from launch.demo import run_demo
    return run_demo(Path(args.workdir), fast=args.fast, seed=args.seed)


def add_training_stage(stages, name: str, what: str, run):
    """A stage whose default command `train` runs `run`; returns its sub-command list."""
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
    p.set_defaults(func=run)
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
    p.set_defaults(func=data_build)
    p = data_cmds.add_parser("convert", help="ImageNet, CUB-200-2011 or Places365 as distributed -> shards")
    p.add_argument("dataset", choices=("imagenet", "cub", "places"))
    p.add_argument("root", help="the dataset's folder as distributed")
    p.add_argument("output", help="the shard directory")
    p.add_argument("--split", help="imagenet: train|val, cub: train|test, places: train|val (default: train)")
    p.add_argument("--part", metavar="i/N", help="convert only slice i of N; then `wsl data merge OUTPUT`")
    add_config_args(p)
    p.set_defaults(func=data_convert)
    p = data_cmds.add_parser("merge", help="join the manifests of a --part i/N build")
    p.add_argument("directory")
    p.add_argument("--parts", type=int, metavar="N", help="merge the parts of the --part i/N build with this N "
                                                         "(needed only when parts of builds with several N are there)")
    p.set_defaults(func=data_merge)
    p = data_cmds.add_parser("verify", help="check every shard, sample and image against the manifest")
    p.add_argument("directory")
    p.add_argument("--workers", type=int, default=0, help="processes (0: one per core)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=data_verify)
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
    p.set_defaults(func=data_dedup, flags=dedup_flags)
    p = data_cmds.add_parser("index", help="add sample tables (and the resampling fit) to shards of an older build")
    p.add_argument("directory")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=data_index)
    p = data_cmds.add_parser("stats", help="label frequency table and Zipf plot")
    p.add_argument("directory")
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--plot", help="PNG path (default: DIR/zipf.png)")
    p.set_defaults(func=data_stats)

    pretrain_cmds = add_training_stage(stages, "pretrain", "train a ResNeXt on hashtag shards", pretrain)
    p = pretrain_cmds.add_parser("export", help="write the backbone of a run's newest checkpoint, for fine-tuning",
                                 description="Write the backbone (every weight but the classifier) of RUN_DIR's "
                                             "newest checkpoint, with its model name and config.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a `wsl pretrain` run directory")
    p.add_argument("out", nargs="?", metavar="OUT.pt", help="where to write it (default: RUN_DIR/backbone.pt; "
                                                             "a folder: OUT/backbone.pt)")
    p.set_defaults(func=pretrain_export)

    p = stages.add_parser("config", help="print a stage's resolved config with each key's comment and range",
                          description="Print the config a stage would run with, as YAML: defaults, then the "
                                      "config files, then the overrides; each key with its comment and range. "
                                      f"Stages: {', '.join(config_stages())}.")
    add_stage_parsers(p, stage_tree())

    from launch.cluster import add_options
    p = stages.add_parser("launch", help="run a stage as a job: here, or on SLURM through submitit "
                                         "(wsl launch [options] STAGE [stage args])",
                          usage="wsl launch [options] STAGE [options] -- [stage args]")
    add_options(p)
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="STAGE ...",
                   help=f"the stage ({', '.join(config_stages())}) and its own arguments")
    p.set_defaults(func=launch)

    finetune_cmds = add_training_stage(stages, "finetune", "full fine-tuning or a linear probe from a backbone",
                                       finetune)
    p = finetune_cmds.add_parser("eval", help="score a fine-tuned checkpoint or probe.pt on labelled shards",
                                 description="Top-1, top-5, mean per-class accuracy and the most-confused class "
                                             "pairs of CHECKPOINT on SHARDS, into evals/SET.json beside the "
                                             "checkpoint, the console and W&B; overrides change the checkpoint's "
                                             "config for this evaluation (eval.image_size=288: a larger crop, the "
                                             "resize scaled alike).")
    p.add_argument("checkpoint", metavar="CHECKPOINT")
    p.add_argument("shards", metavar="SHARDS", help="a single-label shard directory")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value")
    p.set_defaults(func=finetune_eval)

    p = stages.add_parser("demo", help="the whole pipeline on generated data, on CPU, in minutes: does "
                                       "hashtag pretraining beat random init in transfer?")
    p.add_argument("--workdir", default="demo", help="everything it writes goes here (default: demo)")
    p.add_argument("--fast", action="store_true", help="a smaller corpus and schedule (what CI runs)")
    p.add_argument("--seed", type=int, default=0, help="corpus, weights and data order (default: 0)")
    p.set_defaults(func=demo)
    return parser


def with_default_command(argv: list[str]) -> list[str]:
    """`wsl pretrain -c a.yaml k=v` means `wsl pretrain train -c a.yaml k=v`, and `wsl
    pretrain --help` shows what a run takes (finetune alike)."""
    commands = SUB_COMMANDS.get(argv[0]) if argv else None
    if commands and (argv[1:2] == [] or argv[1] not in commands):  # `wsl pretrain --help` too
        return [argv[0], "train", *argv[1:]]
    return argv


class Terminated(Exception):
    """SIGTERM outside a training loop (which checkpoints on it instead)."""


def terminated(signum, frame):
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # Redirected, stdout is block-buffered and stderr (progress bars, warnings) is not: a
    # log would show a stage's results after its later messages, or under the next stage.
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)
    parser = make_parser()
    # argparse gives a '*' positional only the words before the first option, so dotted
    # overrides after one (`wsl data convert cub ROOT OUT --split test key=value`) come back here.
    args, rest = parser.parse_known_args(with_default_command(argv))
    if rest and hasattr(args, "overrides") and all("=" in a and not a.startswith("-") for a in rest):
        args.overrides += rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    # Only where nothing else handles SIGTERM (submitit's job process does, for requeues).
    previous = signal.getsignal(signal.SIGTERM)
    if previous == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, terminated)
    try:
        return args.func(args)
    except user_errors() as err:
        if os.environ.get("WSL_DEBUG"):
            raise
        print(f"wsl: error: {describe(err)}", file=sys.stderr)
        return 2
    except OSError as err:  # a full disk or a mount that turned read-only mid-way
        if err.errno not in writable.WRITE_ERRNOS or os.environ.get("WSL_DEBUG"):
            raise
        print(f"wsl: error: cannot write {err.filename or ''}: {err.strerror}", file=sys.stderr)
        return 2
    except Interrupted as err:  # the checkpoint is written
        print(f"wsl: {err}", file=sys.stderr)
        return 128 + err.signum
    except NonFiniteLoss as err:
        print(f"wsl: {err}", file=sys.stderr)
        return 1
    except Terminated:  # as Ctrl-C: what is finished (shards, features, checkpoints) is kept
        print("wsl: stopped by SIGTERM; re-run the same command to go on", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:  # before training started or outside it: nothing to save
        print("wsl: interrupted", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
