"""Shards on disk: WebDataset tars (KEY.jpg + KEY.json) with a DALI index and a sample
table (tables.py) beside each.

A shard is written under a temporary name and renamed when complete, index and table
first, so a reader (or a resumed build) never sees half a shard. Tars are byte-reproducible (fixed
mtime and owner), so a re-run writes the same bytes and the same sha256.
"""
from __future__ import annotations

import hashlib
import json
import os
import tarfile
from pathlib import Path
from typing import Iterable, Iterator

from tqdm import tqdm

from data_tools.common import atomic
from data_tools.format import tables

DALI_INDEX_VERSION = "v1.2"


def shard_file(name: str, index: int) -> str:
    return f"{name}-{index:06d}.tar"


def index_file(tar_name: str) -> str:
    return tar_name[: -len(".tar")] + ".idx"


def write_shard(path: Path, samples: Iterable[tuple[str, bytes, dict]]) -> dict:
    """Write (key, jpeg, meta) samples to `path` atomically; return its size and sha256."""
    import webdataset as wds  # imports torch: keep it off the path of every `wsl` start-up

    labels = {}
    with atomic.replacing(path, "wb") as f:
        with wds.TarWriter(f, mtime=0, user="wsl", group="wsl") as sink:
            for key, jpeg, meta in samples:
                sink.write({"__key__": key, "jpg": jpeg, "json": meta})
                labels[key] = meta["labels"]
        f.flush()
        idx = path.with_name(index_file(path.name))
        write_dali_index(Path(f.name), idx)
        tables.write_table(path.with_name(tables.table_file(path.name)), dali_index_entries(idx), labels)
        digest = file_sha256(Path(f.name))
        size = os.fstat(f.fileno()).st_size
    return {"bytes": size, "sha256": digest}


def split_name(name: str) -> tuple[str, str]:
    """WebDataset's rule: the key ends at the first dot of the file name."""
    slash = name.rfind("/") + 1
    dot = name.find(".", slash)
    return (name, "") if dot < 0 else (name[:dot], name[dot + 1:])


def write_dali_index(tar_path: Path, idx_path: Path) -> None:
    """DALI readers.webdataset index: 'v1.2 N', then per sample 'ext offset size name' groups."""
    samples: list[list[str]] = []
    last_key = None
    with tarfile.open(tar_path, "r:") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, ext = split_name(member.name)
            entry = f"{ext} {member.offset_data} {member.size} {member.name}"
            if key != last_key:
                samples.append([entry])
                last_key = key
            else:
                samples[-1].append(entry)
    with atomic.replacing(idx_path) as f:
        f.write(f"{DALI_INDEX_VERSION} {len(samples)}\n")
        for entries in samples:
            f.write(" ".join(entries) + "\n")


def read_dali_index(idx_path: Path) -> list[dict[str, tuple[int, int]]]:
    """Per sample, {ext: (offset, size)}; raises ValueError on a malformed index."""
    return [members for _, members in dali_index_entries(idx_path)]


def dali_index_entries(idx_path: Path) -> list[tuple[str, dict[str, tuple[int, int]]]]:
    """Per sample, (key, {ext: (offset, size)}); the file names carry the key."""
    lines = Path(idx_path).read_text().splitlines()
    if not lines:
        raise ValueError(f"{idx_path}: empty index")
    version, count = lines[0].split()
    if version != DALI_INDEX_VERSION or int(count) != len(lines) - 1:
        raise ValueError(f"{idx_path}: header '{lines[0]}' does not match {len(lines) - 1} entries")
    out = []
    for line in lines[1:]:
        parts = line.split()
        members = {parts[i]: (int(parts[i + 1]), int(parts[i + 2])) for i in range(0, len(parts), 4)}
        out.append((split_name(parts[3])[0], members))
    return out


def index_tables(directory: str | Path, progress: bool = True) -> int:
    """Write the table of every shard of DIR's manifest that has none; the number written."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    written = 0
    for entry in tqdm(manifest["shards"], desc="index shards", unit="shard", disable=not progress):
        path = directory / tables.table_file(entry["file"])
        if path.is_file():
            continue
        entries = dali_index_entries(directory / entry["index"])
        if len(entries) != entry["samples"]:
            raise ValueError(f"{entry['index']} lists {len(entries)} samples, the manifest says {entry['samples']}: "
                             f"run `wsl data verify {directory}`")
        tables.write_table(path, entries, None, manifest["num_classes"])
        written += 1
    return written


def iter_samples(tar_path: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {ext: bytes}) in file order; raises tarfile.TarError/OSError on a broken tar."""
    current, files = None, {}
    with tarfile.open(tar_path, "r:") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, ext = split_name(member.name)
            if key != current and current is not None:
                yield current, files
                files = {}
            current = key
            files[ext] = tar.extractfile(member).read()
    if current is not None:
        yield current, files


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(directory: str | Path) -> dict:
    """The manifest of a shard directory, local or at a URL (s3://, gs://, http(s)://)."""
    if "://" in str(directory):
        return json.loads(read_remote(str(directory), "manifest.json"))
    path = Path(directory) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{directory} has no manifest.json (not a finished `wsl data build` output)")
    return json.loads(path.read_text())


def read_vocabulary(directory: str | Path, manifest: dict) -> list:
    """The vocabulary.tsv entries of a shard directory, local or at a URL."""
    from data_tools.labels import vocab
    if "://" in str(directory):
        return vocab.parse(read_remote(str(directory), manifest["vocabulary"]), f"{directory}/{manifest['vocabulary']}")
    return vocab.read(Path(directory) / manifest["vocabulary"])


def read_remote(url: str, name: str) -> str:
    """A small file of a shard directory at a URL, through fsspec (the storage's own
    settings, such as AWS_ENDPOINT_URL or ~/.aws, apply)."""
    import fsspec
    try:
        with fsspec.open(f"{url.rstrip('/')}/{name}", "rt") as f:
            return f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"{url} has no {name} (not a finished `wsl data build` output)") from None
    except Exception as err:  # no such host, refused, no credentials: each client has its own errors
        raise FileNotFoundError(f"cannot read {url}/{name}: {type(err).__name__}: {err}") from None


def write_json(path: Path, data: dict) -> None:
    with atomic.replacing(path) as f:
        f.write(json.dumps(data, indent=1, sort_keys=False) + "\n")


def fingerprint(manifest: dict) -> str:
    """One sha256 naming a shard set's content (its shards' names and sha256s), so a record
    such as a manifest's `dedup` entry can say which evaluation set it was checked against."""
    digest = hashlib.sha256()
    for shard in sorted(manifest["shards"], key=lambda s: s["file"]):
        digest.update(f"{shard['file']} {shard['sha256']}\n".encode())
    return digest.hexdigest()
