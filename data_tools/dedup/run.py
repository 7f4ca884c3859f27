"""`wsl data dedup`: find the training samples that copy an evaluation image.

1. Index: every image of every `--against` set, cut of its frame, as several views
   (views.index_views), described and put in one FAISS index.
2. Threshold: the descriptor's measured default, a given `threshold`, or — for a
   descriptor without one — calibrated on synthetic copies of the against images; the
   calibration's precision and recall are reported either way.
3. Scan: the training shards, one task per shard in worker processes, never more than a
   few shards in memory. Each shard's result is a file under OUT/.dedup/shards, so a
   re-run resumes and `--part i/N` scans shards i, i+N, ...; the run without `--part`
   (or with `--merge`) joins them.
4. Finish: `--self` links training images closer than the threshold (k-NN graph) and
   keeps one per connected component; then matches.jsonl, summary.json, report.html.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from data_tools.common import writable
from data_tools.common.fields import check_ranges
from data_tools.common.log import say
from data_tools.common.part import parse_part
from data_tools.dedup.config import DedupConfig
from data_tools.dedup.finish import finish
from data_tools.dedup.scan import build_index, cached_descriptor, scan, settle_threshold
from data_tools.dedup.sets import ShardSet, open_set
from data_tools.format import shards


def run(cfg: DedupConfig, read_backbone=None) -> dict | None:
    """The whole stage; returns the summary, or None when this `--part` is done but others
    are not. `read_backbone` reads the learned descriptor's network from a file that is not
    TorchScript (descriptors.load_network)."""
    check_ranges(cfg)
    started = time.time()
    train, sets = open_sets(cfg)
    state = check_outputs(cfg) / ".dedup"
    mine, parts = parse_part(cfg.part)
    entries = train.manifest["shards"]
    todo = [e["file"] for e in entries[mine::parts] if not (state / "shards" / f"{e['file']}.json").is_file()]
    if cfg.merge and todo:
        raise ValueError(f"cannot merge: {len(todo)} training shard(s) not scanned yet, e.g. {todo[0]}")

    check_settings(state, settings(cfg, train, sets))
    (state / "shards").mkdir(parents=True, exist_ok=True)
    saved = state / "calibration.json"  # the threshold and what the index found, for --merge
    if todo or not saved.is_file():
        descriptor = cached_descriptor(cfg.descriptor, read_backbone)
        # One store per part: --part runs build their index at the same time.
        store = state / f"keypoints.part{mine}"
        index, thumbnails, against_bad = build_index(cfg, sets, descriptor, store)
        threshold, calibration = settle_threshold(cfg, descriptor, index, thumbnails)
        facts = {"threshold": threshold, "calibration": calibration, "against_bad": against_bad,
                 "index": {**dict(zip(("kind", "nlist", "nprobe"), index.plan)), "images": len(index.images),
                           "views": int(index.index.ntotal)},
                 "timings": {"index_s": round(time.time() - started, 2)}}
        shards.write_json(saved, facts)
        scan_started = time.time()
        scan(cfg, train, todo, index, threshold, state)
        facts["timings"]["scan_s"] = round(time.time() - scan_started, 2)
        shutil.rmtree(store, ignore_errors=True)  # scratch of this scan
    else:  # every shard is scanned: joining needs no index, only what it decided
        facts = json.loads(saved.read_text())
    missing = [e["file"] for e in entries if not (state / "shards" / f"{e['file']}.json").is_file()]
    if missing:
        say(f"part {cfg.part} done; {len(missing)} shard(s) of other parts still to scan, then run "
            "the same command with --merge")
        return None
    for left in state.glob("keypoints.part*"):  # left by a part that was killed: no scan needs it now
        shutil.rmtree(left, ignore_errors=True)
    return finish(cfg, train, sets, facts)


def open_sets(cfg: DedupConfig) -> tuple[ShardSet, list[ShardSet]]:
    train = open_set(cfg.train, "training")
    sets = [open_set(spec, "against") for spec in cfg.against]
    names = [s.name for s in sets]
    if len(set(names)) != len(names):
        raise ValueError(f"against sets need distinct names, got {names}; use --against NAME=DIR")
    return train, sets


def check_outputs(cfg: DedupConfig) -> Path:
    """--apply and --out refused now, not after the scan; returns OUT."""
    if cfg.apply:
        from data_tools.dedup.apply import check_target
        check_target(Path(cfg.apply))
        writable.check_folder(cfg.apply, "--apply")
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a directory")
    writable.check_folder(out, "--out")
    return out


def settings(cfg: DedupConfig, train: ShardSet, sets: list[ShardSet]) -> dict:
    """What decides the results (the threshold follows from these: calibration is seeded):
    a reused OUT must have been made with the same."""
    return {"train": shards.fingerprint(train.manifest),
            "against": [[s.name, shards.fingerprint(s.manifest)] for s in sets],
            "descriptor": asdict(cfg.descriptor), "threshold": cfg.threshold,
            "calibration": asdict(cfg.calibration), "search": asdict(cfg.search), "self_dedup": cfg.self_dedup,
            "components": cfg.components,
            "verify": asdict(cfg.verify)}


def check_settings(state: Path, wanted: dict) -> None:
    path = state / "settings.json"
    if path.is_file():
        recorded = recorded_settings(path)
        if recorded != wanted:
            data = [k for k in ("train", "against") if recorded.get(k) != wanted.get(k)]
            if data:  # other shards: no setting resumes it
                raise ValueError(f"{state.parent} holds results of another dedup run (other {' and '.join(data)} "
                                 "set); choose an empty --out directory")
            raise ValueError(f"{state.parent} holds results of another dedup run, begun with "
                             f"{' '.join(_begun_with(recorded, wanted))}; give those to resume it, or choose an "
                             "empty --out directory")
        return
    state.mkdir(parents=True, exist_ok=True)
    shards.write_json(path, wanted)


def _begun_with(recorded: dict, wanted: dict, prefix: str = "") -> list[str]:
    """The dotted overrides (KEY=VALUE) that make `wanted` the `recorded` settings."""
    out = []
    for key in {**recorded, **wanted}:
        was, now = recorded.get(key), wanted.get(key)
        if was == now:
            continue
        if isinstance(was, dict) and isinstance(now, dict):
            out += _begun_with(was, now, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}={was if isinstance(was, str) else json.dumps(was)}")  # as YAML reads it
    return out


def recorded_settings(path: Path) -> dict:
    """settings.json as this version writes it: one written before verify.method took
    "off" holds verify.enabled, whose false is method off."""
    recorded = json.loads(path.read_text())
    verify = recorded.get("verify", {})
    if "enabled" in verify:
        verify["method"] = verify["method"] if verify.pop("enabled") else "off"
    return recorded
