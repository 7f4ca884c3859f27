"""Joining the shards' results: --self's k-NN components, the chain rule, matches.jsonl,
summary.json, report.html, and --apply."""
from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import asdict
from pathlib import Path

import numpy as np

from data_tools.common import atomic
from data_tools.dedup.config import DedupConfig
from data_tools.dedup.search import make_index
from data_tools.dedup.sets import ShardSet
from data_tools.format import shards

BAD_EXAMPLES = 10


def finish(cfg, train: ShardSet, sets, facts: dict) -> dict:
    """Join the shards' results: --self, matches.jsonl, summary.json, report.html, --apply."""
    threshold, against_bad = facts["threshold"], facts["against_bad"]
    from data_tools.dedup import report
    out = Path(cfg.out)
    results = [json.loads((out / ".dedup" / "shards" / f"{e['file']}.json").read_text())
               for e in train.manifest["shards"]]
    matches = removals(cfg, out, train, results, threshold)
    with atomic.replacing(out / "matches.jsonl") as f:
        for m in matches:
            f.write(json.dumps(m) + "\n")
    bad = [b for r in results for b in r["bad"]]
    removed = {m["train_key"] for m in matches}
    summary = {
        "train": {"directory": str(train.directory), "samples": sum(r["samples"] for r in results),
                  "undecodable": len(bad), "undecodable_examples": bad[:BAD_EXAMPLES]},
        "against": [{"name": s.name, "directory": str(s.directory.resolve()),
                     "fingerprint": shards.fingerprint(s.manifest), "num_samples": s.manifest["num_samples"],
                     "matched_train_samples": len({m["train_key"] for m in matches if m["against"] == s.name}),
                     "undecodable": len(against_bad.get(s.name, []))} for s in sets],
        "self": {"enabled": cfg.self_dedup, "components": cfg.components,
                 "removed": len({m["train_key"] for m in matches if m["against"] == "self"}),
                 "removed_through_chains": len({m["train_key"] for m in matches if m["against"] == "chain"})},
        "removed": len(removed),
        "most_matched": most_matched(matches),
        "descriptor": descriptor_name(cfg),
        "threshold": threshold,
        "verify": {**asdict(cfg.verify), "pairs_aligned": sum(r.get("aligned", 0) for r in results)},
        "calibration": facts["calibration"],
        "index": facts["index"],
        "timings": facts["timings"],
    }
    shards.write_json(out / "summary.json", summary)
    near = sorted((n for r in results for n in r["near"]), key=lambda n: -n["score"])[:cfg.near_misses]
    report.write(out / "report.html", summary, matches, near, train, sets, cfg.report_pairs)
    if cfg.apply:
        filtered = apply_filter(cfg, train, summary, matches, bad)
        summary["apply"] = {"directory": cfg.apply, "num_samples": filtered["num_samples"]}
        shards.write_json(out / "summary.json", summary)
    return summary


MANY_MATCHES = 3   # training images on one evaluation image that make it worth a look


def most_matched(matches: list[dict], top: int = 10) -> list[dict]:
    """Evaluation images that many training images matched: a photo re-posted many times,
    or a layout so plain that look-alikes reach the threshold. Either way, worth a look."""
    counts = Counter((m["against"], m["eval_key"], m["eval_path"]) for m in matches
                     if m["against"] not in ("self", "chain"))
    return [{"against": against, "eval_key": key, "eval_path": path, "matches": n}
            for (against, key, path), n in counts.most_common(top) if n >= MANY_MATCHES]


def dedup_record(summary: dict) -> dict:
    """The manifest's `dedup` entry (the contract the transfer stage's leak guard reads)."""
    return {
        "against": [{k: a[k] for k in ("name", "directory", "fingerprint", "num_samples")}
                    for a in summary["against"]],
        "descriptor": summary["descriptor"],
        "threshold": summary["threshold"],
        "verify": {k: v for k, v in summary["verify"].items() if k != "pairs_aligned"},
        "removed": summary["removed"],
        "self": summary["self"]["enabled"],
        "calibration": {k: summary["calibration"][k] for k in ("precision", "recall")},
    }


def apply_filter(cfg: DedupConfig, train: ShardSet, summary: dict, matches: list[dict], bad: list[dict]) -> dict:
    from data_tools.dedup.apply import apply
    removed, undecodable = defaultdict(set), defaultdict(set)
    for m in matches:
        removed[m["train_shard"]].add(m["train_key"])
    for b in bad:
        undecodable[b["shard"]].add(b["key"])
    return apply(train.directory, train.manifest, Path(cfg.apply), removed, undecodable,
                 dedup_record(summary), cfg.workers, cfg.progress)


def descriptor_name(cfg: DedupConfig) -> str:
    d = cfg.descriptor
    if d.name == "dct":
        return f"dct-rgb-{d.side}px-{d.block}x{d.block}"
    return f"learned:{Path(d.checkpoint).name}"


def removals(cfg, out: Path, train: ShardSet, results: list[dict], threshold: float) -> list[dict]:
    """The shards' matches to evaluation images, then --self's, then the chain rule's."""
    matches = [m for r in results for m in r["matches"]]
    if cfg.self_dedup:
        # The chain rule must see the copies' own self matches: they join a copy to its component.
        already = set() if cfg.components else {m["train_key"] for m in matches}
        matches += self_matches(cfg, out, train, results, threshold, already)
        if cfg.components:
            matches = chain_matches(matches)
    return matches


def self_matches(cfg, out: Path, train: ShardSet, results: list[dict], threshold: float,
                 already: set[str]) -> list[dict]:
    """Connected components of the training images' k-NN graph above the threshold: the
    first image of each component (in shard order) stays, the others are matches to it."""
    keys, paths, shard_of, vectors = [], [], [], []
    for e, found in zip(train.manifest["shards"], results):
        keys += found["keys"]
        paths += found["paths"]
        shard_of += [e["file"]] * len(found["keys"])
        vectors.append(np.load(out / ".dedup" / "shards" / f"{e['file']}.npy").astype(np.float32))
    x = np.concatenate(vectors)
    if len(x) < 2:
        return []
    index = make_index(x.shape[1], cfg.search.index, cfg.search.nlist, cfg.search.nprobe, x)
    scores, rows = index.search(x, min(cfg.search.self_k, len(x)))
    parent = list(range(len(x)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, (row_scores, row_ids) in enumerate(zip(scores, rows)):
        for s, j in zip(row_scores, row_ids):
            if j >= 0 and j != i and s >= threshold:
                a, b = root(i), root(int(j))
                if a != b:
                    parent[max(a, b)] = min(a, b)  # the root is the component's first image
    found = []
    for i in range(len(x)):
        r = root(i)
        if r != i and keys[i] not in already:
            score = float(np.dot(x[i], x[r]))
            found.append({"train_key": keys[i], "train_path": paths[i], "train_shard": shard_of[i],
                          "against": "self", "eval_key": keys[r], "eval_path": paths[r],
                          "eval_shard": shard_of[r], "score": round(score, 5)})
    return found



def chain_matches(matches: list[dict]) -> list[dict]:
    """DINOv2's rule: every training image in a near-duplicate component (the --self
    matches join an image to its component's first one) that holds a copy of an
    evaluation image goes too. Its self match becomes a "chain" match to that copy,
    and so does the first image of the component."""
    leaked = {m["train_key"]: m for m in matches if m["against"] not in ("self", "chain")}
    component = defaultdict(list)                       # first image -> its self matches
    for m in matches:
        if m["against"] == "self":
            component[m["eval_key"]].append(m)
    out = [m for m in matches if m["against"] != "self"]
    for first, members in component.items():
        keys = [first] + [m["train_key"] for m in members]
        copy = next((leaked[k] for k in keys if k in leaked), None)
        if copy is None:
            out += members
            continue
        source = {"eval_key": copy["train_key"], "eval_path": copy["train_path"], "eval_shard": copy["train_shard"]}
        for m in members:
            if m["train_key"] not in leaked:
                out.append({**m, "against": "chain", **source})
        if first not in leaked:
            head = members[0]
            out.append({"train_key": first, "train_path": head["eval_path"], "train_shard": head["eval_shard"],
                        "against": "chain", **source, "score": head["score"]})
    return out
