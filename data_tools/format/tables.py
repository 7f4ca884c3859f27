"""Per-shard sample tables: where each sample's JPEG lies in its tar, its labels and its key.

A table (`NAME-000000.table`, beside the tar) is one small binary file a loader memory-maps
and reads only when a rank reaches that shard, so start-up never touches the samples of a
shard set (the DALI index is text and the labels sit in each sample's json: reading those
for every shard is what made start-up grow with the data set). Layout: an 8-byte magic, the
length of a JSON header, the header (row count, the arrays' dtypes, lengths and offsets),
then the arrays, each 8-byte aligned:

    offset int64[n]      JPEG data offset in the tar       size    int64[n]   JPEG bytes
    label_ptr int64[n+1] labels of row i: label_idx[ptr[i]:ptr[i+1]] (CSR)   label_idx int32
    key_ptr int64[n+1]   key of row i: keys[kptr[i]:kptr[i+1]] (ASCII)       keys uint8
    bad uint8[n]         0, or why the sample is unusable (BAD_REASONS[code])

One row per sample of the DALI index, usable or not, so a shard's row count is the
manifest's count for it and a plan can be made from the manifest alone.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from data_tools.common import atomic

MAGIC = b"WSLTAB1\n"
BAD_REASONS = ("", "missing_jpg", "missing_json", "bad_json", "no_labels", "bad_labels")
ALIGN = 8


def table_file(tar_name: str) -> str:
    return tar_name[: -len(".tar")] + ".table"


def write(path: Path, arrays: dict[str, np.ndarray], **header) -> None:
    """Write named 1-D arrays (and a few header values) atomically."""
    layout, offset = [], 0
    for name, array in arrays.items():
        layout.append([name, array.dtype.str, len(array), offset])
        offset += -(-array.nbytes // ALIGN) * ALIGN
    text = json.dumps({**header, "arrays": layout}).encode()
    text += b" " * (-(len(MAGIC) + 8 + len(text)) % ALIGN)
    with atomic.replacing(path, "wb") as f:
        f.write(MAGIC + len(text).to_bytes(8, "little") + text)
        for array in arrays.values():
            data = np.ascontiguousarray(array).tobytes()
            f.write(data + b"\0" * (-len(data) % ALIGN))


def read(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(header, arrays) with the arrays memory-mapped read-only: pages load as they are used."""
    with open(path, "rb") as f:
        head = f.read(len(MAGIC) + 8)
        if len(head) < len(MAGIC) + 8 or head[:len(MAGIC)] != MAGIC:
            raise ValueError(f"{path}: not a sample table (run `wsl data index {Path(path).parent}`)")
        length = int.from_bytes(head[len(MAGIC):], "little")
        header = json.loads(f.read(length))
    start = len(MAGIC) + 8 + length  # written padded to ALIGN
    data = np.memmap(path, np.uint8, mode="r")
    arrays = {}
    for name, dtype, count, offset in header.pop("arrays"):
        dtype = np.dtype(dtype)
        at = start + offset
        arrays[name] = data[at:at + count * dtype.itemsize].view(dtype)
    return header, arrays


class Table:
    """One shard's rows."""

    def __init__(self, path: Path):
        self.path = path
        header, a = read(path)
        self.rows = header["rows"]
        self.offset, self.size, self.bad = a["offset"], a["size"], a["bad"]
        self.label_ptr, self.label_idx = a["label_ptr"], a["label_idx"]
        self.key_ptr, self.keys = a["key_ptr"], a["keys"]

    def __len__(self) -> int:
        return self.rows

    def key(self, row: int) -> str:
        return self.keys[self.key_ptr[row]:self.key_ptr[row + 1]].tobytes().decode()

    def labels(self, row: int) -> np.ndarray:
        return self.label_idx[self.label_ptr[row]:self.label_ptr[row + 1]]

    def usable_labels(self) -> tuple[np.ndarray, np.ndarray]:
        """The labels (CSR) of the usable rows only."""
        ok = self.bad == 0
        lengths = np.diff(self.label_ptr)
        keep = np.repeat(ok, lengths)
        return np.concatenate([[0], np.cumsum(lengths[ok])]), np.asarray(self.label_idx[keep], np.int64)


def arrays_for(entries: list[tuple[str, tuple[int, int] | None, list[int] | None, int]]) -> dict[str, np.ndarray]:
    """Table arrays from (key, (jpg offset, size) or None, labels or None, bad code) per sample."""
    keys = [key.encode() for key, _, _, _ in entries]
    labels = [lab or [] for _, _, lab, _ in entries]
    return {
        "offset": np.asarray([jpg[0] if jpg else -1 for _, jpg, _, _ in entries], np.int64),
        "size": np.asarray([jpg[1] if jpg else -1 for _, jpg, _, _ in entries], np.int64),
        "label_ptr": np.concatenate([[0], np.cumsum([len(x) for x in labels])]).astype(np.int64),
        "label_idx": np.asarray([i for x in labels for i in x], np.int32),
        "key_ptr": np.concatenate([[0], np.cumsum([len(k) for k in keys])]).astype(np.int64),
        "keys": np.frombuffer(b"".join(keys), np.uint8),
        "bad": np.asarray([code for _, _, _, code in entries], np.uint8),
    }


def write_table(path: Path, index: list[tuple[str, dict[str, tuple[int, int]]]], labels: dict[str, list[int]] | None,
                num_classes: int | None = None) -> None:
    """The table of a tar from its DALI index entries; labels by key (a build knows them) or,
    when None, read from each sample's json in the tar (`wsl data index` on older shards)."""
    entries = []
    fd = os.open(path.with_name(path.name[: -len(".table")] + ".tar"), os.O_RDONLY) if labels is None else None
    try:
        for key, members in index:
            if labels is not None:
                reason, found = ("", labels[key]) if key in labels else ("missing_json", None)
                if not reason and not found:  # the same rule as a json read back
                    reason = "no_labels"
            elif "json" not in members:
                reason, found = "missing_json", None
            else:
                offset, size = members["json"]
                reason, found = parse_labels(os.pread(fd, size, offset), num_classes)
            if "jpg" not in members:
                reason = "missing_jpg"
            entries.append((key, members.get("jpg"), found if not reason else None, BAD_REASONS.index(reason)))
    finally:
        if fd is not None:
            os.close(fd)
    write(path, arrays_for(entries), rows=len(entries))


def parse_labels(raw: bytes, num_classes: int) -> tuple[str, list[int] | None]:
    try:
        labels = json.loads(raw)["labels"]
    except (ValueError, KeyError, TypeError):
        return "bad_json", None
    if not isinstance(labels, list) or not labels:
        return "no_labels", None
    if any(not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < num_classes for i in labels):
        return "bad_labels", None
    return "", labels
