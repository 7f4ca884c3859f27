"""The output directory of a build: checked before any work, claimed by one build's
fingerprint, cleared of what a build without a usable image wrote.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from data_tools.common import writable
from data_tools.format import shards
from data_tools.format.manifest import add_counts, first_examples
from data_tools.writing.workers import stats_path

# Every file a build (and `wsl data stats`) writes into its output directory; a shard file
# may be a writer's temporary one (atomic.temp_name).
SHARD_FILE = re.compile(r"[^-/.]+-(?P<shard>\d{6,})\.(tar|idx|table)(\.\d+-[0-9a-f]+\.tmp)?")
BUILD_FILE = re.compile(rf"\.build|vocabulary\.tsv|resampling\.table|manifest(\.part-\d{{5}}-of-\d{{5}})?\.json|zipf\.png"
                        rf"|{SHARD_FILE.pattern}|.*\.tmp")


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
