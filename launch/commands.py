"""The stage commands of `wsl`, each a handler of parsed arguments: what `wsl STAGE` runs,
and, through `run`, what a `wsl launch` job and the demo run."""
from __future__ import annotations

import json
from pathlib import Path

from data_tools.common import writable
from data_tools.common.config import ConfigError
from data_tools.common.config import build as make_config
from data_tools.common.log import say
from launch import exits
from launch.parser import dedup_flags, parse
from launch.preflight import check_finetune, check_pretrain, limit_threads
from launch.stages import STAGES, config_class


def run(argv: list[str]) -> int:
    """`wsl ARGV` for a stage's command, in this process: its exit status."""
    args = parse(argv)
    return exits.status(HANDLERS[args.handler], args)


def data_build(args) -> int:
    from data_tools.build import BuildConfig, build
    from data_tools.format.manifest import summary
    overrides = args.overrides + ([f"part={args.part}"] if args.part else [])
    cfg = make_config(BuildConfig, args.config, overrides)
    print(summary(build(cfg)))
    return 0


def data_convert(args) -> int:
    from data_tools.convert import ConvertConfig, convert, describe
    from data_tools.format.manifest import summary
    # JSON-quoted, so a path YAML would misread ("a: b", "yes", "123") stays the string given.
    given = {"dataset": args.dataset, "root": args.root, "output": args.output, "split": args.split, "part": args.part}
    overrides = [f"{key}={json.dumps(value)}" for key, value in given.items() if value is not None]
    manifest = convert(make_config(ConvertConfig, args.config, overrides + args.overrides))
    print(summary(manifest))
    print(describe(manifest))
    if manifest["num_samples"] == 0:
        say("wsl: error: no usable image in the input")
        return 1
    return 0


def data_merge(args) -> int:
    from data_tools.format.manifest import merge, summary
    print(summary(merge(args.directory, args.parts)))
    return 0


def data_verify(args) -> int:
    from data_tools.format.verify import verify
    problems = verify(args.directory, workers=args.workers, progress=not args.quiet)
    if problems:
        say(f"{len(problems)} problem(s) in {args.directory}; the first:")
        for line in problems[:20]:
            say(f"  {line}")
        return 1
    print(f"{args.directory}: all shards, samples and images check out")
    return 0


def data_dedup(args) -> int:
    from data_tools.dedup.config import DedupConfig
    from data_tools.dedup.run import run
    cfg = make_config(DedupConfig, args.config, args.overrides + dedup_flags(args))
    read_backbone = None
    if cfg.descriptor.name == "learned":  # torch is imported only for a network
        from pretrain.backbone import feature_network as read_backbone
    summary = run(cfg, read_backbone)
    if summary is None:
        return 0
    print(f"{summary['removed']} of {summary['train']['samples']} training samples match "
          f"({dedup_rule(summary)}, {summary['descriptor']}); "
          f"{summary['train']['undecodable']} undecodable; report: {Path(cfg.out) / 'report.html'}")
    if cfg.apply:
        print(f"filtered shards: {cfg.apply} ({summary['apply']['num_samples']} samples)")
    return 0


def dedup_rule(summary: dict) -> str:
    """Which method decided the matches, for the console line."""
    verify = summary["verify"]
    if verify["method"] == "local":
        return f"verify.method=local: {verify['pairs_aligned']} shortlisted pairs verified by local features"
    if verify["method"] == "align":
        return (f"verify.method=align: {verify['pairs_aligned']} pairs from {verify['candidates']:.2f} aligned, "
                f"threshold {verify['threshold']:.2f}")
    return f"verify.method=off: the descriptor alone, threshold {summary['threshold']:.4f}"


def data_index(args) -> int:
    from data_tools.format import resampling, shards
    written = shards.index_tables(args.directory, progress=not args.quiet)
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
    cfg = make_config(config_class(STAGES[args.stage]), args.config, args.overrides, check=False)
    print(annotated_yaml(cfg, f"wsl {args.stage}: defaults, then {' '.join(args.config) or 'no config file'}, "
                              f"then {' '.join(args.overrides) or 'no override'}"))
    try:
        check_sections(cfg)
    except ConfigError as err:  # a config still being written (no run_dir yet) is worth showing
        print(f"# not runnable as is: {err}")
    return 0


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
    limit_threads(cfg)
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


HANDLERS = {"data build": data_build, "data convert": data_convert, "data merge": data_merge,
            "data verify": data_verify, "data dedup": data_dedup, "data index": data_index,
            "data stats": data_stats, "pretrain train": pretrain, "pretrain export": pretrain_export,
            "config": show_config, "finetune train": finetune, "finetune eval": finetune_eval}
