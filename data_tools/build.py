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
import re
import shutil
import sys
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path
from typing import Literal

from tqdm import tqdm

from data_tools.common import writable
from data_tools.common.fields import bounded
from data_tools.common.threads import cores, pool_worker
from data_tools.format import resampling, shards
from data_tools.inputs.images import BadImage, ImageRules, map_box, prepare
from data_tools.inputs.sources import ImageFolderSource, ManifestSource, Record
from data_tools.labels import vocab
from data_tools.labels.wordnet import WordNet

FORMAT = "wsl-shards/1"
SIZE_SAMPLE = 1000      # records whose file size estimates the shard length
BAD_EXAMPLES = 10       # bad paths kept in the manifest
# Every file a build (and `wsl data stats`) writes into its output directory; a shard file
# may be a writer's temporary one (atomic.temp_name).
SHARD_FILE = re.compile(r"[^-/.]+-(?P<shard>\d{6,})\.(tar|idx|table)(\.\d+-[0-9a-f]+\.tmp)?")
BUILD_FILE = re.compile(rf"\.build|vocabulary\.tsv|resampling\.table|manifest(\.part-\d{{5}}-of-\d{{5}})?\.json|zipf\.png"
                        rf"|{SHARD_FILE.pattern}|.*\.tmp")
EARLY_CHECK = 1000      # records after which a mostly malformed manifest stops the build
BUCKET_RECORDS = 200_000  # order=hash: records per bucket file, the most held in memory at once
MAX_BUCKETS = 1000        # ... unless that would need more open files than this


@dataclass
class InputConfig:
    manifest: str | None = None      # JSONL {"path", "tags"} or TSV path<TAB>tags
    imagefolder: str | None = None   # root/CLASS/IMAGE, single-label
    root: str | None = None          # base of relative paths (default: the manifest's folder)


@dataclass
class VocabConfig:
    top_k: int = bounded(17000, lo=1)            # labels kept: the synsets with the most images
    min_count: int = bounded(1, lo=1)            # images a synset needs to be kept
    restrict: str | None = None      # file of synset ids, e.g. the ImageNet-1k wnids
    reuse: str | None = None         # another build's vocabulary.tsv (or its directory): the same
                                     # labels in the same order, as a held-out set needs
    wordnet_dir: str | None = None   # default: Debian's /usr/share/wordnet


@dataclass
class ImageConfig:
    max_side: int | None = bounded(None, lo=32)  # longer side above this is downscaled (None: keep)
    max_pixels: int = bounded(89_478_485, lo=1)  # larger images are skipped as decompression bombs
    quality: int = bounded(95, lo=1, hi=100)     # JPEG quality of converted images


@dataclass
class ShardConfig:
    name: str = "train"              # shard files are NAME-000000.tar
    target_mb: float = bounded(256.0, lo=0, open_lo=True)  # shard size aimed at
    samples: int | None = bounded(None, lo=1)   # samples per shard (about, with order=hash); overrides target_mb
    # hash: each record goes to the shard its key's hash picks, shards hold their records in
    # hash order, so batches are mixed whatever the input's order (a crawl is grouped by
    # tag); input: the input's order, every shard but the last exactly `samples` long.
    order: Literal["hash", "input"] = "hash"


@dataclass
class BuildConfig:
    output: str = ""                 # the shard directory (new, empty or an earlier build of this input)
    input: InputConfig = field(default_factory=InputConfig)
    vocab: VocabConfig = field(default_factory=VocabConfig)
    images: ImageConfig = field(default_factory=ImageConfig)
    shards: ShardConfig = field(default_factory=ShardConfig)
    part: str = "0/1"                # i/N: build every N-th shard from shard i (a SLURM array task)
    workers: int = bounded(0, lo=0, hi=1024)  # 0: one per core; 1: no worker processes
    seed: int = bounded(0, lo=0, hi=2**32 - 1)  # order of an ImageFolder's files
    progress: bool = True

    def check(self) -> None:
        if not self.output:
            raise ValueError("config key 'output' is required (the shard directory)")
        if (self.input.manifest is None) == (self.input.imagefolder is None):
            raise ValueError("give exactly one of 'input.manifest' and 'input.imagefolder'")
        parse_part(self.part)
        if self.vocab.reuse and self.vocab.restrict:
            raise ValueError("give at most one of 'vocab.reuse' and 'vocab.restrict'")
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
        self.source = source
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
        return self.source.lemma(sid)


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


@dataclass
class Tally:
    """What the count pass learns: images per synset, records dropped by reason, a sample
    of file sizes, records kept, and the first malformed manifest lines."""
    counts: Counter = field(default_factory=Counter)
    dropped: Counter = field(default_factory=Counter)
    sizes: list[int] = field(default_factory=list)
    kept: int = 0
    records: int = 0
    malformed: list[dict] = field(default_factory=list)


def count_pass(source, labeler: Labeler, progress: bool) -> Tally:
    tally = Tally()
    for record in tqdm(source, desc="count tags", unit="img", disable=not progress, mininterval=1):
        count(tally, record, labeler(record))
        if tally.records == EARLY_CHECK:
            check_lines(source, tally)
    check_lines(source, tally)
    if not source.single_label:
        tally.dropped["tags_not_in_wordnet"] = labeler.unknown_tags
    return tally


def count(tally: Tally, record: Record, ids: list[str]) -> None:
    tally.records += 1
    problem = record_problem(record, ids)
    if problem:
        tally.dropped[problem] += 1
        if record.error and len(tally.malformed) < BAD_EXAMPLES:
            tally.malformed.append({"key": record.key, "path": "", "line": record.line,
                                    "reason": record.error, "detail": record.detail})
        return
    tally.counts.update(ids)
    tally.kept += 1
    if len(tally.sizes) < SIZE_SAMPLE:
        try:
            tally.sizes.append(os.stat(record.path).st_size)
        except OSError:
            pass


def check_lines(source, tally: Tally) -> None:
    """Stop when most manifest lines are malformed: the manifest is of another kind (other
    field names, TSV named .jsonl), and every later message would mislead."""
    bad = tally.dropped["malformed_line"]
    if not bad or bad * 2 <= tally.records:
        return
    expected = ('path<TAB>tags lines' if source.tsv else
                'JSON objects with "path" (a file) and "tags" (a list or a string)')
    first = "; ".join(f"line {e['line']}: {e['detail']}" for e in tally.malformed[:3])
    raise ValueError(f"input.manifest {source.path}: {bad} of {tally.records} lines read are not "
                     f"{expected}; first bad lines: {first}")


def choose_vocab(cfg: BuildConfig, source, labeler: Labeler, tally: Tally) -> list[vocab.Entry]:
    if source.single_label:
        chosen = list(source.classes)
    elif cfg.vocab.reuse:
        path = Path(cfg.vocab.reuse)
        chosen = [e.synset for e in vocab.read(path / "vocabulary.tsv" if path.is_dir() else path)]
    else:
        if not tally.records:
            raise ValueError("the input has no records (an empty manifest)")
        if not tally.counts:
            dropped = ", ".join(f"{k}={v}" for k, v in sorted(tally.dropped.items()) if v)
            hint = ("; not one record has a tag: a manifest is JSONL ({\"path\": ..., \"tags\": [...]}) or TSV "
                    "with a tab between the path and the tags" if tally.dropped.get("no_tags") == tally.records else "")
            raise ValueError(f"no record of the input has a tag WordNet knows ({tally.records} records; {dropped}){hint}")
        restrict = vocab.read_synset_list(cfg.vocab.restrict) if cfg.vocab.restrict else None
        chosen = vocab.select(tally.counts, cfg.vocab.top_k, cfg.vocab.min_count, restrict)
    if not chosen:
        raise ValueError("the vocabulary is empty: no tag of the input reached vocab.min_count"
                         + (" within vocab.restrict" if cfg.vocab.restrict else ""))
    return [vocab.Entry(sid, labeler.lemma(sid), tally.counts[sid]) for sid in chosen]


def samples_per_shard(cfg: ShardConfig, sizes: list[int]) -> int:
    if cfg.samples:
        return cfg.samples
    mean = sum(sizes) / len(sizes) if sizes else 100_000
    return max(1, int(cfg.target_mb * 2**20 / mean))


def vocab_labels(record: Record, labeler: Labeler, index_of: dict[str, int], dropped: Counter) -> list[int]:
    """The record's vocabulary indices; none for a record the count pass dropped (already
    counted there) or one with no tag in the vocabulary (counted here)."""
    ids = labeler(record)
    if record_problem(record, ids):
        return []
    labels = sorted(index_of[sid] for sid in ids if sid in index_of)
    if not labels:
        dropped["no_vocab_tag"] += 1
    return labels


def plan(source, labeler: Labeler, index_of: dict[str, int], per_shard: int, part: tuple[int, int], dropped: Counter):
    """Yield (shard index, [(key, path, labels, json meta)]) for this part's shards."""
    mine, parts = part
    shard, group = 0, []
    for record in source:
        labels = vocab_labels(record, labeler, index_of, dropped)
        if not labels:
            continue
        if shard % parts == mine:
            group.append((record.key, record.path, labels, record.sample_meta()))
        else:
            group.append(None)  # keep positions so every part cuts shards at the same records
        if len(group) == per_shard:
            if shard % parts == mine:
                yield shard, group
            shard, group = shard + 1, []
    if group and shard % parts == mine:
        yield shard, group


def key_hash(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")


def mixed_plan(source, labeler: Labeler, index_of: dict[str, int], total: int, per_shard: int,
               part: tuple[int, int], dropped: Counter, workdir: Path):
    """Like `plan`, with order=hash: record -> shard hash(key) * total / 2^64, each shard's
    records sorted by hash. Memory stays bounded: this part's records are scattered into
    bucket files on disk (a few shards each), then each bucket is read back, sorted and cut."""
    mine, parts = part
    ours = range(mine, total, parts)
    buckets = max(1, min(MAX_BUCKETS, -(-len(ours) * per_shard // BUCKET_RECORDS)))
    per_bucket = -(-len(ours) // buckets)
    folder = workdir / f"scatter-{mine:05d}-of-{parts:05d}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    files = [open(folder / f"{b:05d}.jsonl", "w") for b in range(buckets)]
    try:
        for record in source:
            labels = vocab_labels(record, labeler, index_of, dropped)
            if not labels:
                continue
            h = key_hash(record.key)
            shard = (h * total) >> 64
            if shard % parts == mine:
                files[shard // parts // per_bucket].write(
                    json.dumps([shard, h, record.key, record.path, labels, record.sample_meta()]) + "\n")
    finally:
        for f in files:
            f.close()
    for b in range(buckets):
        bucket = folder / f"{b:05d}.jsonl"
        rows = sorted(json.loads(line) for line in bucket.read_text().splitlines())
        bucket.unlink()
        groups = {shard: list(group) for shard, group in groupby(rows, key=lambda r: r[0])}
        for shard in ours[b * per_bucket:(b + 1) * per_bucket]:
            yield shard, [(key, path, labels, meta) for _, _, key, path, labels, meta in groups.get(shard, [])]
    shutil.rmtree(folder)


def write_one_shard(out: str, name: str, shard: int, group: list, rules: ImageRules, num_classes: int) -> dict:
    """Worker: read, check and convert each image, write the shard, then its stats file."""
    remove_temp_files(Path(out), shards.shard_file(name, shard))
    tag_counts, bad, converted, examples = Counter(), Counter(), Counter(), []
    samples = []
    for key, path, labels, meta in group:
        try:
            with open(path, "rb") as f:
                data = f.read()
            jpeg, conversions = prepare(data, rules)
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
        if "bbox" in meta and {"resized", "exif_rotated"} & set(conversions):
            meta = {**meta, "bbox": map_box(meta["bbox"], data, jpeg)}
        tag_counts.update(labels)
        samples.append((key, jpeg, {"labels": labels, **meta}))
    tar = shards.shard_file(name, shard)
    info = shards.write_shard(Path(out) / tar, samples)
    stats = {
        "shard": shard, "file": tar, "index": shards.index_file(tar), "samples": len(samples), **info,
        "tag_counts": [tag_counts.get(i, 0) for i in range(num_classes)],
        "bad": dict(bad), "converted": dict(converted), "bad_examples": examples[:BAD_EXAMPLES],
    }
    shards.write_json(stats_path(out, shard), stats)
    return stats


def remove_temp_files(out: Path, tar: str) -> None:
    """What a writer of this shard killed mid-way left (each writer's temporary files have
    names of their own); only this shard's writer runs now."""
    stem = tar[: -len(".tar")]
    for path in [*out.glob(f"{stem}.*.tmp"), *(out / ".build").glob(f"{stem.rsplit('-', 1)[1]}.json.*.tmp")]:
        path.unlink(missing_ok=True)


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
    workers = cfg.workers or cores()

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
        with ProcessPoolExecutor(workers, initializer=pool_worker) as pool:
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


def check_fingerprint(out: Path, fingerprint: dict, part: tuple[int, int]) -> None:
    """Refuse to mix two builds in one directory, unless the earlier one finished no shard
    (then a corrected re-run takes the directory over)."""
    path = out / ".build" / "fingerprint.json"
    if path.is_file() and json.loads(path.read_text()) != fingerprint:
        if any((out / ".build").glob("[0-9]*.json")):
            raise ValueError(f"{out} holds shards of a different build (other inputs, vocabulary "
                             "or settings); choose an empty output directory")
        remove_shards(out, part)
    path.parent.mkdir(parents=True, exist_ok=True)
    shards.write_json(path, fingerprint)


def remove_shards(out: Path, part: tuple[int, int]) -> None:
    """Delete this part's shard files (parts running beside it keep theirs)."""
    mine, parts = part
    for path in out.iterdir():
        match = SHARD_FILE.fullmatch(path.name)
        if match and int(match["shard"]) % parts == mine:
            path.unlink()


def check_output(out: Path, source) -> None:
    """Before any work: the output is a directory of its own, not the input, not a
    folder of other files (a re-run's earlier build is fine)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"output {out} is a file; give a directory for the shards")
    writable.check_folder(out, "output")
    target, inputs = out.resolve(), Path(source.root).resolve()
    if target == inputs or target in inputs.parents:
        raise ValueError(f"output {out} is or holds the input folder {inputs}; choose a directory of its own")
    if source.single_label and inputs in target.parents:
        raise ValueError(f"output {out} is inside the input image folder {inputs}, where it would "
                         "read as a class; choose a directory outside it")
    if out.is_dir():
        foreign = sorted(p.name for p in out.iterdir() if not BUILD_FILE.fullmatch(p.name))
        if foreign:
            raise ValueError(f"output {out} holds files that no `wsl data build` wrote "
                             f"({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}); "
                             "choose an empty or new directory")


def build(cfg: BuildConfig) -> dict:
    source = open_source(cfg)
    return write_dataset(cfg, source, lambda: Labeler(source, cfg.vocab.wordnet_dir))


def write_dataset(cfg, source, make_labeler, extra: dict | None = None) -> dict:
    """Both passes over any source; `wsl data convert` enters here with its own labelled source.

    `cfg` needs output, part, workers, progress, images, shards (and vocab for multi-label
    data); `make_labeler()` makes the Labeler once the output is checked; `extra` adds
    top-level manifest keys.
    """
    part = parse_part(cfg.part)
    out = Path(cfg.output)
    check_output(out, source)
    labeler = make_labeler()

    tally = count_pass(source, labeler, cfg.progress)
    entries = choose_vocab(cfg, source, labeler, tally)
    per_shard = samples_per_shard(cfg.shards, tally.sizes)
    inputs_hash = source.fingerprint()
    vocab_hash = hashlib.sha256("\n".join(e.synset for e in entries).encode()).hexdigest()
    out.mkdir(parents=True, exist_ok=True)
    check_fingerprint(out, {"inputs_sha256": inputs_hash, "vocab_sha256": vocab_hash,
                            "samples_per_shard": per_shard, "config": content_config(cfg)}, part)
    vocab.write(out / "vocabulary.tsv", entries)

    # Records without a vocabulary tag are only known in the write pass: the bar's total
    # is an upper bound.
    total = -(-tally.kept // per_shard)
    mine = len(range(part[0], total, part[1]))
    index_of = {e.synset: i for i, e in enumerate(entries)}
    rules = ImageRules(cfg.images.max_side, cfg.images.max_pixels, cfg.images.quality)
    if cfg.shards.order == "hash":
        jobs = mixed_plan(source, labeler, index_of, total, per_shard, part, tally.dropped, out / ".build")
    else:
        jobs = plan(source, labeler, index_of, per_shard, part, tally.dropped)
    results = run_jobs(cfg, out, jobs, rules, len(entries), mine)
    if part[1] == 1 and not any(r["samples"] for r in results):
        discard(out, results)
        raise ValueError(f"no usable image in the input, nothing kept in {out}: {bad_line(results)}")

    manifest = {**assemble(results, entries, source, tally, per_shard, inputs_hash, cfg), **(extra or {})}
    shards.write_json(out / manifest_name(part), manifest)
    if part[1] == 1:
        resampling.fit(out, cfg.progress)
    return manifest


def discard(out: Path, results: list[dict]) -> None:
    """Remove what a build without a single usable image wrote: nothing may pass for shards."""
    remove_shards(out, (0, 1))
    for path in [*(stats_path(out, r["shard"]) for r in results), out / ".build" / "fingerprint.json",
                 out / "vocabulary.tsv"]:
        path.unlink(missing_ok=True)
    if not any((out / ".build").iterdir()):
        (out / ".build").rmdir()


def bad_line(results: list[dict]) -> str:
    counts = add_counts(r["bad"] for r in results)
    first = first_examples(r["bad_examples"] for r in results)[:3]
    return (", ".join(f"{k}={v}" for k, v in counts.items())
            + "; first: " + ", ".join(f"{e['path']} ({e['reason']})" for e in first))


def add_counts(counts) -> dict:
    """Sum {reason: n} dicts, keys sorted, so shards and parts add up to one stable manifest."""
    return dict(sorted(sum((Counter(c) for c in counts), Counter()).items()))


def first_examples(lists) -> list[dict]:
    """The BAD_EXAMPLES earliest bad samples in input order, wherever they were found (a
    malformed line, found by every part's count pass, once)."""
    unique = {e["key"]: e for examples in lists for e in examples}
    return [unique[key] for key in sorted(unique)[:BAD_EXAMPLES]]


def shard_entries(results: list[dict]) -> list[dict]:
    """The manifest's `shards` list from the writers' per-shard stats."""
    return [{k: r[k] for k in ("shard", "file", "index", "samples", "bytes", "sha256")} for r in results]


def sum_tag_counts(results: list[dict], num_classes: int) -> list[int]:
    return [sum(col) for col in zip(*(r["tag_counts"] for r in results))] or [0] * num_classes


def assemble(results: list[dict], entries: list[vocab.Entry], source, tally: Tally,
             per_shard: int, inputs_hash: str, cfg: BuildConfig) -> dict:
    tag_counts = sum_tag_counts(results, len(entries))
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
        "shards": shard_entries(results),
        "tag_counts": tag_counts,
        "bad_samples": add_counts(r["bad"] for r in results),
        "bad_examples": first_examples([tally.malformed, *(r["bad_examples"] for r in results)]),
        "converted": add_counts(r["converted"] for r in results),
        "dropped": dict(sorted(tally.dropped.items())),
        "inputs_sha256": inputs_hash,
        "config": content_config(cfg),
    }


PART_MANIFEST = re.compile(r"manifest\.part-(\d{5})-of-(\d{5})\.json")


def part_manifests(out: Path, n: int | None) -> tuple[int, dict[int, Path]]:
    """N and {i: path} of the `--part i/N` manifests to merge. An earlier build of the same
    data with another N lists the same shards: its parts are never mixed in."""
    found: dict[int, dict[int, Path]] = {}
    for path in out.glob("manifest.part-*-of-*.json"):
        match = PART_MANIFEST.fullmatch(path.name)
        if match:
            found.setdefault(int(match[2]), {})[int(match[1])] = path
    if not found:
        raise FileNotFoundError(f"{out} holds no manifest.part-*-of-*.json to merge")
    if n is None:
        if len(found) > 1:
            raise ValueError(f"cannot merge: {out} holds parts of builds in {' and '.join(map(str, sorted(found)))} "
                             "parts; say which with --parts N")
        n = next(iter(found))
    if n not in found:
        raise ValueError(f"cannot merge: {out} holds no part of a build in {n} parts "
                         f"(it holds parts of {' and '.join(map(str, sorted(found)))})")
    missing = [i for i in range(n) if i not in found.get(n, {})]
    if missing:
        raise ValueError(f"cannot merge: part(s) {', '.join(f'{i}/{n}' for i in missing)} not finished")
    return n, found[n]


def merge(directory: str, n: int | None = None) -> dict:
    """Join the part manifests of a `--part i/N` build into manifest.json (N: the only one
    present, unless given)."""
    out = Path(directory)
    n, paths = part_manifests(out, n)
    parts = [json.loads(paths[i].read_text()) for i in range(n)]
    first = parts[0]
    for p in parts[1:]:
        for key in ("inputs_sha256", "config", "num_classes", "samples_per_shard", "dropped"):
            if p[key] != first[key]:
                raise ValueError(f"cannot merge: parts disagree on '{key}' (built from different inputs or settings)")
    results = sorted((s for p in parts for s in p["shards"]), key=lambda s: s["shard"])
    if len({s["shard"] for s in results}) != len(results):
        raise ValueError(f"cannot merge: a shard is listed by two parts of {directory}")
    if not any(s["samples"] for s in results):
        raise ValueError(f"cannot merge: no part of {directory} holds a usable image")
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
    resampling.fit(out, progress=False)
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
        where = example["path"] or f"manifest line {example['line']}"
        detail = f": {example['detail']}" if example.get("detail") else ""
        lines.append(f"  bad: {where} ({example['reason']}){detail}")
    return "\n".join(lines)
