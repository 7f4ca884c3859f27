"""The count pass: every record's tags canonicalised and counted per synset, the records
dropped counted by reason, a sample of file sizes for the shard length.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field

from tqdm import tqdm

from data_tools.format.manifest import BAD_EXAMPLES
from data_tools.inputs.sources import Record

SIZE_SAMPLE = 1000      # records whose file size estimates the shard length
EARLY_CHECK = 1000      # records after which a mostly malformed manifest stops the build


def record_problem(record: Record, ids: list[str]) -> str:
    if record.error:
        return record.error
    if not record.tags:
        return "no_tags"
    if not ids:
        return "no_wordnet_tag"
    return ""


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


def count_pass(source, labeler, progress: bool) -> Tally:
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


def samples_per_shard(cfg, sizes: list[int]) -> int:
    """Samples per shard: `shards.samples`, or what makes `shards.target_mb` from the sampled sizes."""
    if cfg.samples:
        return cfg.samples
    mean = sum(sizes) / len(sizes) if sizes else 100_000
    return max(1, int(cfg.target_mb * 2**20 / mean))
