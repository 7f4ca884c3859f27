"""Both passes over a source, end to end: `wsl data build` and `wsl data convert` enter here."""
from __future__ import annotations

import hashlib
from pathlib import Path

from data_tools.common.part import parse_part
from data_tools.format import resampling, shards
from data_tools.format.manifest import assemble, content_config, manifest_name
from data_tools.inputs.images import ImageRules
from data_tools.labels import vocab
from data_tools.writing.count import count_pass, samples_per_shard
from data_tools.writing.output import bad_line, check_fingerprint, check_output, discard
from data_tools.writing.plan import mixed_plan, plan
from data_tools.writing.workers import run_jobs


def write_dataset(cfg, source, make_labeler, choose_vocab, extra: dict | None = None) -> dict:
    """Both passes over any source; `wsl data convert` enters here with its own labelled source.

    `cfg` needs output, part, workers, progress, images, shards (and vocab for multi-label
    data); `make_labeler()` makes the Labeler once the output is checked;
    `choose_vocab(cfg, source, labeler, tally)` picks the vocabulary after the count pass
    (data_tools/build.py's); `extra` adds top-level manifest keys.
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
