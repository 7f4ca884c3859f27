"""`wsl data build`: tagged images → canonical labels → vocabulary → verified shards.

Two streaming passes over the input, so memory does not grow with the number of images
(only the per-synset counts do): the count pass canonicalises tags and counts images per
synset; the write pass sends fixed-size groups of records to worker processes, each of
which writes one whole shard. Shard i always holds the same records, so
- a re-run skips every shard whose stats file exists and ends with the same manifest,
- `--part i/N` builds shards i, i+N, i+2N, ... (a SLURM array builds a billion images),
  and `wsl data merge` joins the parts' manifests into the one manifest.json.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

from tqdm import tqdm

from data_tools import shards, vocab
from data_tools.images import BadImage, ImageRules, prepare
from data_tools.sources import ImageFolderSource, ManifestSource, Record
from data_tools.wordnet import WordNet

FORMAT = "wsl-shards/1"
SIZE_SAMPLE = 1000      # records whose file size estimates the shard length
BAD_EXAMPLES = 10       # bad paths kept in the manifest


@dataclass
class InputConfig:
    manifest: str | None = None      # JSONL {"path", "tags"} or TSV path<TAB>tags
    imagefolder: str | None = None   # root/CLASS/IMAGE, single-label
    root: str | None = None          # base of relative paths (default: the manifest's folder)


@dataclass
class VocabConfig:
    top_k: int = 17000
    min_count: int = 1
    restrict: str | None = None      # file of synset ids, e.g. the ImageNet-1k wnids
    reuse: str | None = None         # another build's vocabulary.tsv (or its directory): the same
                                     # labels in the same order, as a held-out set needs
    wordnet_dir: str | None = None   # default: Debian's /usr/share/wordnet


@dataclass
class ImageConfig:
    max_side: int | None = None
    max_pixels: int = 89_478_485
    quality: int = 95


@dataclass
class ShardConfig:
    name: str = "train"
    target_mb: float = 256.0
    samples: int | None = None       # fixed samples per shard; overrides target_mb


@dataclass
class BuildConfig:
    output: str = ""
    input: InputConfig = field(default_factory=InputConfig)
    vocab: VocabConfig = field(default_factory=VocabConfig)
    images: ImageConfig = field(default_factory=ImageConfig)
    shards: ShardConfig = field(default_factory=ShardConfig)
    part: str = "0/1"
    workers: int = 0                 # 0: one per core; 1: no worker processes
    seed: int = 0                    # order of an ImageFolder's files
    progress: bool = True

    def check(self) -> None:
        if not self.output:
            raise ValueError("config key 'output' is required (the shard directory)")
        if (self.input.manifest is None) == (self.input.imagefolder is None):
            raise ValueError("give exactly one of 'input.manifest' and 'input.imagefolder'")
        parse_part(self.part)
        if self.vocab.reuse and self.vocab.restrict:
            raise ValueError("give at most one of 'vocab.reuse' and 'vocab.restrict'")
        if self.vocab.top_k < 1 or self.vocab.min_count < 1:
            raise ValueError("'vocab.top_k' and 'vocab.min_count' must be >= 1")
        if self.shards.samples is not None and self.shards.samples < 1:
            raise ValueError("'shards.samples' must be >= 1")
        if self.shards.target_mb <= 0:
            raise ValueError("'shards.target_mb' must be > 0")
        if "-" in self.shards.name or "/" in self.shards.name or "." in self.shards.name:
            raise ValueError("'shards.name' may not contain '-', '/' or '.'")


def parse_part(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"'part' must look like i/N (e.g. 3/16), got {text!r}") from None
    if not 0 <= i < n:
        raise ValueError(f"'part' {text}: need 0 <= i < N")
    return i, n


class Labeler:
    """Raw tags → sorted unique canonical ids (WordNet synsets, or the ImageFolder class)."""

    def __init__(self, source, wordnet_dir: str | None):
        self.single = source.single_label
        self.wordnet = None if self.single else WordNet(wordnet_dir)
        self.unknown_tags = 0

    def __call__(self, record: Record) -> list[str]:
        if self.single:
            return list(record.tags)
        ids = set()
        for tag in record.tags:
            sid = self.wordnet.lookup(tag)
            if sid is None:
                self.unknown_tags += 1
            else:
                ids.add(sid)
        return sorted(ids)

    def lemma(self, sid: str) -> str:
        if self.wordnet is not None:
            return self.wordnet.lemma(sid)
        return sid


def record_problem(record: Record, ids: list[str]) -> str:
    if record.error:
        return record.error
    if not record.tags:
        return "no_tags"
    if not ids:
        return "no_wordnet_tag"
    return ""


def open_source(cfg: BuildConfig):
    if cfg.input.manifest:
        return ManifestSource(cfg.input.manifest, cfg.input.root)
    return ImageFolderSource(cfg.input.imagefolder, cfg.seed)


def count_pass(source, labeler: Labeler, progress: bool) -> tuple[Counter, Counter, list[int], int]:
    """Images per synset, records dropped by reason, a sample of file sizes, records kept."""
    counts, dropped, sizes, kept = Counter(), Counter(), [], 0
    for record in tqdm(source, desc="count tags", unit="img", disable=not progress, mininterval=1):
        ids = labeler(record)
        problem = record_problem(record, ids)
        if problem:
            dropped[problem] += 1
            continue
        counts.update(ids)
        kept += 1
        if len(sizes) < SIZE_SAMPLE:
            try:
                sizes.append(os.stat(record.path).st_size)
            except OSError:
                pass
    if not source.single_label:
        dropped["tags_not_in_wordnet"] = labeler.unknown_tags
    return counts, dropped, sizes, kept


def choose_vocab(cfg: BuildConfig, source, labeler: Labeler, counts: Counter) -> list[vocab.Entry]:
    if source.single_label:
        chosen = list(source.classes)
    elif cfg.vocab.reuse:
        path = Path(cfg.vocab.reuse)
        chosen = [e.synset for e in vocab.read(path / "vocabulary.tsv" if path.is_dir() else path)]
    else:
        restrict = vocab.read_synset_list(cfg.vocab.restrict) if cfg.vocab.restrict else None
        chosen = vocab.select(counts, cfg.vocab.top_k, cfg.vocab.min_count, restrict)
    if not chosen:
        raise ValueError("the vocabulary is empty: no tag of the input reached vocab.min_count")
    return [vocab.Entry(sid, labeler.lemma(sid), counts[sid]) for sid in chosen]


def samples_per_shard(cfg: ShardConfig, sizes: list[int]) -> int:
    if cfg.samples:
        return cfg.samples
    mean = sum(sizes) / len(sizes) if sizes else 100_000
    return max(1, int(cfg.target_mb * 2**20 / mean))


def plan(source, labeler: Labeler, index_of: dict[str, int], per_shard: int, part: tuple[int, int], dropped: Counter):
    """Yield (shard index, [(key, path, labels, tags)]) for this part's shards."""
    mine, parts = part
    shard, group = 0, []
    for record in source:
        ids = labeler(record)
        if record_problem(record, ids):
            continue
        labels = sorted(index_of[sid] for sid in ids if sid in index_of)
        if not labels:
            dropped["no_vocab_tag"] += 1
            continue
        if shard % parts == mine:
            group.append((record.key, record.path, labels, record.tags))
        else:
            group.append(None)  # keep positions so every part cuts shards at the same records
        if len(group) == per_shard:
            if shard % parts == mine:
                yield shard, group
            shard, group = shard + 1, []
    if group and shard % parts == mine:
        yield shard, group


def write_one_shard(out: str, name: str, shard: int, group: list, rules: ImageRules, num_classes: int) -> dict:
    """Worker: read, check and convert each image, write the shard, then its stats file."""
    tag_counts, bad, converted, examples = Counter(), Counter(), Counter(), []
    samples = []
    for key, path, labels, tags in group:
        try:
            with open(path, "rb") as f:
                jpeg, conversions = prepare(f.read(), rules)
        except BadImage as err:
            bad[err.reason] += 1
            examples.append({"key": key, "path": path, "reason": err.reason})
            continue
        except OSError as err:
            reason = "missing_file" if isinstance(err, FileNotFoundError) else "unreadable_file"
            bad[reason] += 1
            examples.append({"key": key, "path": path, "reason": reason})
            continue
        converted.update(conversions)
        tag_counts.update(labels)
        samples.append((key, jpeg, {"labels": labels, "tags": tags, "path": path}))
    tar = shards.shard_file(name, shard)
    info = shards.write_shard(Path(out) / tar, samples)
    stats = {
        "shard": shard, "file": tar, "index": shards.index_file(tar), "samples": len(samples), **info,
        "tag_counts": [tag_counts.get(i, 0) for i in range(num_classes)],
        "bad": dict(bad), "converted": dict(converted), "bad_examples": examples[:BAD_EXAMPLES],
    }
    shards.write_json(stats_path(out, shard), stats)
    return stats


def stats_path(out: str | Path, shard: int) -> Path:
    return Path(out) / ".build" / f"{shard:06d}.json"


def finished(out: Path, shard: int) -> dict | None:
    path = stats_path(out, shard)
    if not path.is_file():
        return None
    stats = json.loads(path.read_text())
    tar = out / stats["file"]
    if not tar.is_file() or tar.stat().st_size != stats["bytes"]:
        return None
    return stats


def run_jobs(cfg: BuildConfig, out: Path, jobs, rules: ImageRules, num_classes: int, total: int) -> list[dict]:
    results, skipped = [], 0
    bar = tqdm(total=total, desc="write shards", unit="shard", disable=not cfg.progress)
    workers = cfg.workers or os.cpu_count() or 1

    def todo():
        nonlocal skipped
        for shard, group in jobs:
            done = finished(out, shard)
            if done is not None:
                skipped += 1
                results.append(done)
                bar.update()
                continue
            yield (str(out), cfg.shards.name, shard, group, rules, num_classes)

    if workers == 1:
        for args in todo():
            results.append(write_one_shard(*args))
            bar.update()
    else:
        with ProcessPoolExecutor(workers) as pool:
            pending = set()
            # Bounded in-flight work: the record groups of a billion-image input never
            # pile up in memory ahead of the workers.
            for args in todo():
                pending.add(pool.submit(write_one_shard, *args))
                if len(pending) >= 2 * workers:
                    pending = _collect(pending, results, bar)
            while pending:
                pending = _collect(pending, results, bar)
    bar.close()
    if skipped:
        print(f"resumed: {skipped} finished shard(s) kept", file=sys.stderr)
    return sorted(results, key=lambda s: s["shard"])


def _collect(pending: set, results: list, bar) -> set:
    done, pending = wait(pending, return_when=FIRST_COMPLETED)
    for future in done:
        results.append(future.result())
        bar.update()
    return pending


def content_config(cfg: BuildConfig) -> dict:
    """The settings that decide the shards' content (not where or how fast they are built)."""
    data = dataclasses.asdict(cfg)
    for key in ("output", "workers", "progress", "part"):
        data.pop(key)
    return data


def manifest_name(part: tuple[int, int]) -> str:
    i, n = part
    return "manifest.json" if n == 1 else f"manifest.part-{i:05d}-of-{n:05d}.json"


def check_fingerprint(out: Path, fingerprint: dict) -> None:
    path = out / ".build" / "fingerprint.json"
    if path.is_file():
        if json.loads(path.read_text()) != fingerprint:
            raise ValueError(f"{out} holds shards of a different build (other inputs, vocabulary "
                             "or settings); choose an empty output directory")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    shards.write_json(path, fingerprint)


def build(cfg: BuildConfig) -> dict:
    part = parse_part(cfg.part)
    source = open_source(cfg)
    labeler = Labeler(source, cfg.vocab.wordnet_dir)
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)

    counts, dropped, sizes, kept = count_pass(source, labeler, cfg.progress)
    entries = choose_vocab(cfg, source, labeler, counts)
    per_shard = samples_per_shard(cfg.shards, sizes)
    inputs_hash = source.fingerprint()
    vocab_hash = hashlib.sha256("\n".join(e.synset for e in entries).encode()).hexdigest()
    check_fingerprint(out, {"inputs_sha256": inputs_hash, "vocab_sha256": vocab_hash,
                            "samples_per_shard": per_shard, "config": content_config(cfg)})
    vocab.write(out / "vocabulary.tsv", entries)

    # Records without a vocabulary tag are only known in the write pass: the bar's total
    # is an upper bound.
    total = -(-kept // per_shard)
    mine = len(range(part[0], total, part[1]))
    index_of = {e.synset: i for i, e in enumerate(entries)}
    rules = ImageRules(cfg.images.max_side, cfg.images.max_pixels, cfg.images.quality)
    jobs = plan(source, labeler, index_of, per_shard, part, dropped)
    results = run_jobs(cfg, out, jobs, rules, len(entries), mine)

    manifest = assemble(results, entries, source, dropped, per_shard, inputs_hash, cfg)
    shards.write_json(out / manifest_name(part), manifest)
    return manifest


def add_counts(counts) -> dict:
    """Sum {reason: n} dicts, keys sorted, so shards and parts add up to one stable manifest."""
    return dict(sorted(sum((Counter(c) for c in counts), Counter()).items()))


def first_examples(lists) -> list[dict]:
    """The BAD_EXAMPLES earliest bad samples in input order, wherever they were found."""
    return sorted((e for examples in lists for e in examples), key=lambda e: e["key"])[:BAD_EXAMPLES]


def assemble(results: list[dict], entries: list[vocab.Entry], source, dropped: Counter,
             per_shard: int, inputs_hash: str, cfg: BuildConfig) -> dict:
    tag_counts = [sum(col) for col in zip(*(r["tag_counts"] for r in results))] or [0] * len(entries)
    return {
        "format": FORMAT,
        "name": cfg.shards.name,
        "label_type": "single" if source.single_label else "multi",
        "num_classes": len(entries),
        "vocabulary": "vocabulary.tsv",
        "num_samples": sum(r["samples"] for r in results),
        "num_shards": len(results),
        "samples_per_shard": per_shard,
        "part": cfg.part,
        "shards": [{k: r[k] for k in ("shard", "file", "index", "samples", "bytes", "sha256")} for r in results],
        "tag_counts": tag_counts,
        "bad_samples": add_counts(r["bad"] for r in results),
        "bad_examples": first_examples(r["bad_examples"] for r in results),
        "converted": add_counts(r["converted"] for r in results),
        "dropped": dict(sorted(dropped.items())),
        "inputs_sha256": inputs_hash,
        "config": content_config(cfg),
    }


def merge(directory: str) -> dict:
    """Join the part manifests of a `--part i/N` build into manifest.json."""
    out = Path(directory)
    paths = sorted(out.glob("manifest.part-*-of-*.json"))
    if not paths:
        raise FileNotFoundError(f"{directory} holds no manifest.part-*-of-*.json to merge")
    parts = [json.loads(p.read_text()) for p in paths]
    n = int(parts[0]["part"].split("/")[1])
    found = {int(p["part"].split("/")[0]) for p in parts if p["part"].endswith(f"/{n}")}
    missing = sorted(set(range(n)) - found)
    if missing:
        raise ValueError(f"cannot merge: part(s) {', '.join(f'{i}/{n}' for i in missing)} not finished")
    first = parts[0]
    for p in parts[1:]:
        for key in ("inputs_sha256", "config", "num_classes", "samples_per_shard", "dropped"):
            if p[key] != first[key]:
                raise ValueError(f"cannot merge: parts disagree on '{key}' (built from different inputs or settings)")
    results = sorted((s for p in parts for s in p["shards"]), key=lambda s: s["shard"])
    merged = dict(first)
    merged.update({
        "num_samples": sum(s["samples"] for s in results),
        "num_shards": len(results),
        "part": "0/1",
        "shards": results,
        "tag_counts": [sum(col) for col in zip(*(p["tag_counts"] for p in parts))],
        "bad_samples": add_counts(p["bad_samples"] for p in parts),
        "bad_examples": first_examples(p["bad_examples"] for p in parts),
        "converted": add_counts(p["converted"] for p in parts),
    })
    shards.write_json(out / "manifest.json", merged)
    return merged


def summary(manifest: dict) -> str:
    lines = [f"{manifest['num_samples']} samples in {manifest['num_shards']} shard(s), "
             f"{manifest['num_classes']} labels ({manifest['label_type']}-label)"]
    for title, counts in (("dropped records", manifest["dropped"]), ("bad images", manifest["bad_samples"]),
                          ("converted images", manifest["converted"])):
        shown = {k: v for k, v in counts.items() if v}
        if shown:
            lines.append(f"{title}: " + ", ".join(f"{k}={v}" for k, v in shown.items()))
    for example in manifest["bad_examples"][:5]:
        lines.append(f"  bad: {example['path']} ({example['reason']})")
    return "\n".join(lines)
