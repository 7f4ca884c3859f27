"""`wsl data verify DIR`: prove a shard directory is what its manifest says, before a long run.

Checks every shard listed: present, sha256 and size as recorded, tar readable, every
sample has jpg + json with labels inside the vocabulary, every image decodes, sample
counts, the DALI index and the sample table agree, the resampling fit is of these
shards; and that no stray shard lies beside them.
"""
from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from data_tools.common.threads import cores, pool_worker
from data_tools.format import resampling, shards, tables
from data_tools.labels import vocab

MAX_PROBLEMS = 20


def check_shard(directory: str, entry: dict, num_classes: int) -> list[str]:
    path = Path(directory) / entry["file"]
    if not path.is_file():
        return [f"{entry['file']}: missing"]
    problems = []
    if path.stat().st_size != entry["bytes"]:
        problems.append(f"{entry['file']}: {path.stat().st_size} bytes, manifest says {entry['bytes']}")
    elif shards.file_sha256(path) != entry["sha256"]:
        problems.append(f"{entry['file']}: sha256 differs from the manifest (file changed or corrupt)")
    found = []  # (key, labels) per sample, to check the table against
    try:
        for key, files in shards.iter_samples(path):
            problems += check_sample(entry["file"], key, files, num_classes)
            found.append((key, _labels(files)))
    except (tarfile.TarError, OSError, EOFError) as err:
        return problems + [f"{entry['file']}: unreadable tar after {len(found)} samples ({err})"]
    if len(found) != entry["samples"]:
        problems.append(f"{entry['file']}: {len(found)} samples, manifest says {entry['samples']}")
    index = check_index(Path(directory) / entry["index"], len(found))
    problems += index
    if not index:
        problems += check_table(Path(directory), entry, found)
    return problems


def _labels(files: dict) -> list[int] | None:
    try:
        return list(json.loads(files["json"])["labels"])
    except (ValueError, KeyError, TypeError):
        return None


def check_table(directory: Path, entry: dict, found: list[tuple[str, list[int] | None]]) -> list[str]:
    """The sample table agrees with the tar and its DALI index: keys, JPEG places, labels."""
    path = directory / tables.table_file(entry["file"])
    if not path.is_file():
        return [f"{path.name}: sample table missing (run `wsl data index {directory}`)"]
    try:
        table = tables.Table(path)
    except (ValueError, KeyError, OSError) as err:
        return [f"{path.name}: unreadable sample table ({err})"]
    if len(table) != len(found):
        return [f"{path.name}: {len(table)} rows, tar holds {len(found)} samples"]
    index = shards.dali_index_entries(directory / entry["index"])
    for row, ((key, labels), (_, members)) in enumerate(zip(found, index)):
        jpg = members.get("jpg", (-1, -1))
        if (table.key(row) != key or (int(table.offset[row]), int(table.size[row])) != jpg
                or (table.bad[row] == 0 and table.labels(row).tolist() != labels)):
            return [f"{path.name}: row {row} ({key}) disagrees with the tar"]
    return []


def check_sample(shard: str, key: str, files: dict, num_classes: int) -> list[str]:
    where = f"{shard}:{key}"
    if set(files) != {"jpg", "json"}:
        return [f"{where}: has {sorted(files)}, expected jpg and json"]
    try:
        meta = json.loads(files["json"])
        labels = meta["labels"]
    except (ValueError, KeyError, TypeError):
        return [f"{where}: json is not valid sample metadata"]
    if not labels or any(not isinstance(i, int) or not 0 <= i < num_classes for i in labels):
        return [f"{where}: labels {labels} outside 0..{num_classes - 1}"]
    try:
        with Image.open(io.BytesIO(files["jpg"])) as im:
            if im.format != "JPEG":
                return [f"{where}: image is {im.format}, not JPEG"]
            im.load()
    except Exception as err:  # any decoder failure is a finding, not a crash
        return [f"{where}: image does not decode ({err})"]
    return []


def check_index(idx: Path, count: int) -> list[str]:
    if not idx.is_file():
        return [f"{idx.name}: DALI index missing"]
    try:
        entries = shards.read_dali_index(idx)
    except (ValueError, IndexError) as err:
        return [f"{idx.name}: malformed DALI index ({err})"]
    if len(entries) != count:
        return [f"{idx.name}: indexes {len(entries)} samples, tar holds {count}"]
    return []


def verify(directory: str, workers: int = 0, progress: bool = True) -> list[str]:
    """All problems found (empty: the directory is sound)."""
    manifest = shards.read_manifest(directory)
    problems = []
    entries = vocab.read(Path(directory) / manifest["vocabulary"])
    if len(entries) != manifest["num_classes"]:
        problems.append(f"vocabulary.tsv has {len(entries)} labels, manifest says {manifest['num_classes']}")
    listed = Counter(e["file"] for e in manifest["shards"])
    problems += [f"{name}: listed {count} times in the manifest (every epoch would read it {count} times)"
                 for name, count in listed.items() if count > 1]
    stray = sorted(p.name for p in Path(directory).glob(f"{manifest['name']}-*.tar") if p.name not in listed)
    problems += [f"{name}: shard not in the manifest" for name in stray]
    if sum(e["samples"] for e in manifest["shards"]) != manifest["num_samples"]:
        problems.append("manifest: shard sample counts do not add up to num_samples")
    try:
        resampling.load(Path(directory), manifest)
    except (FileNotFoundError, ValueError) as err:
        problems.append(str(err))
    workers = workers or cores()
    jobs = [(directory, e, manifest["num_classes"]) for e in manifest["shards"]]
    bar = tqdm(total=len(jobs), desc="verify", unit="shard", disable=not progress)
    with ProcessPoolExecutor(workers, initializer=pool_worker) as pool:
        for found in pool.map(check_shard, *zip(*jobs)) if jobs else []:
            problems += found
            bar.update()
    bar.close()
    return problems
