"""data_tools/format/shards.py, as `wsl data build` writes it: shard files named and numbered,
every sample once with its original bytes, DALI indexes that point at each member."""
from __future__ import annotations

import json
import tarfile
from pathlib import Path

from helpers import read_samples

from data_tools.format import shards


def test_shard_files_are_named_and_numbered(shard_dir, expected):
    tars = sorted(p.name for p in shard_dir.glob("*.tar"))
    count = -(-len(expected) // 32)
    assert tars == [f"train-{i:06d}.tar" for i in range(count)]
    assert sorted(p.name for p in shard_dir.glob("*.idx")) == [f"train-{i:06d}.idx" for i in range(count)]
    sizes = [sum(1 for _ in shards.iter_samples(shard_dir / t)) for t in tars]
    assert sum(sizes) == len(expected) and min(sizes) > 0  # about 32 each: the key's hash picks the shard


def test_every_sample_once_with_original_bytes_and_metadata(shard_dir, expected):
    vocabulary = [line.split("\t")[1] for line in (shard_dir / "vocabulary.tsv").read_text().splitlines()[1:]]
    found = read_samples(shard_dir)
    keys = [key for _, key, _ in found]
    assert len(keys) == len(set(keys)), "a sample appears twice"
    assert set(keys) == set(expected)
    for _, key, files in found:
        assert set(files) == {"jpg", "json"}
        meta = json.loads(files["json"])
        want = expected[key]
        assert set(meta) == {"labels", "tags", "path"}
        assert meta["path"] == want["path"]
        assert meta["tags"] == want["tags"]
        assert sorted(meta["labels"]) == sorted(vocabulary.index(sid) for sid in want["synsets"])
        # A sane RGB JPEG is stored as is: no generation loss.
        assert files["jpg"] == Path(want["path"]).read_bytes(), key


def test_dali_index_offsets_point_at_each_member(shard_dir):
    for tar_path in sorted(shard_dir.glob("*.tar")):
        raw = tar_path.read_bytes()
        with tarfile.open(tar_path) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}
        lines = tar_path.with_suffix(".idx").read_text().splitlines()
        assert lines[0] == f"v1.2 {len(lines) - 1}"
        assert len(lines) - 1 == len(members) // 2
        seen = []
        for line in lines[1:]:
            fields = line.split()
            assert len(fields) == 8, line  # jpg and json: 'ext offset size name' each
            exts = []
            for ext, offset, size, name in zip(*[iter(fields)] * 4):
                offset, size = int(offset), int(size)
                assert name.endswith("." + ext)
                assert raw[offset: offset + size] == members[name], f"{tar_path.name}: {name}"
                exts.append(ext)
                seen.append(name)
            assert sorted(exts) == ["jpg", "json"]
            assert len({name.split(".")[0] for name in fields[3::4]}) == 1
        assert sorted(seen) == sorted(members)
