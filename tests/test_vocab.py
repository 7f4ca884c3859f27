"""The label vocabulary: top-K by image count, min_count, a synset list, vocabulary.tsv."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from helpers import build_shards, write_corpus

from data_tools.format import shards
from data_tools.labels import vocab
from data_tools.labels.wordnet import WordNet


@pytest.fixture(scope="module")
def wn() -> WordNet:
    return WordNet()


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory) -> Path:
    """80 tiny JPEGs with the synthetic hashtags (read-only)."""
    return write_corpus(tmp_path_factory.mktemp("vocab_corpus"), 80, seed=7, size=(32, 24))


def synsets_per_record(manifest: Path, wn: WordNet) -> list[set[str]]:
    return [{sid for sid in map(wn.lookup, json.loads(line)["tags"]) if sid}
            for line in manifest.read_text().splitlines()]


def image_counts(records: list[set[str]]) -> Counter:
    return Counter(sid for ids in records for sid in ids)


def read_tsv(path: Path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text().splitlines()]


def samples(out: Path) -> dict[str, dict]:
    """key -> sample json, over every shard of a build."""
    found = {}
    for tar in sorted(out.glob("*.tar")):
        for key, files in shards.iter_samples(tar):
            assert key not in found
            found[key] = json.loads(files["json"])
    return found


# -- select() ------------------------------------------------------------------------------

def test_select_orders_by_count_then_synset_id():
    counts = Counter({"n3": 5, "n1": 9, "n2": 5, "n4": 1})
    assert vocab.select(counts, top_k=10) == ["n1", "n2", "n3", "n4"]
    assert vocab.select(counts, top_k=2) == ["n1", "n2"]


def test_select_min_count_and_restrict():
    counts = Counter({"n3": 5, "n1": 9, "n2": 5, "n4": 1})
    assert vocab.select(counts, top_k=10, min_count=5) == ["n1", "n2", "n3"]
    assert vocab.select(counts, top_k=10, restrict={"n4", "n3", "n9"}) == ["n3", "n4"]
    assert vocab.select(counts, top_k=10, min_count=2, restrict={"n4", "n3", "n9"}) == ["n3"]
    assert vocab.select(counts, top_k=1, restrict={"n4", "n3"}) == ["n3"]


def test_read_synset_list(tmp_path):
    path = tmp_path / "wnids.txt"
    path.write_text("# ImageNet subset\n\nn02084071\nn02121620 cat  # a comment\n  n02132136\t brown bear\n")
    assert vocab.read_synset_list(str(path)) == {"n02084071", "n02121620", "n02132136"}
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(ValueError, match="empty"):
        vocab.read_synset_list(str(tmp_path / "empty.txt"))
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        vocab.read_synset_list(str(tmp_path / "missing.txt"))


def test_vocabulary_file_round_trip(tmp_path):
    entries = [vocab.Entry("n02084071", "dog", 12), vocab.Entry("n02121620", "cat", 7)]
    path = tmp_path / "vocabulary.tsv"
    vocab.write(path, entries)
    assert path.read_text() == "index\tsynset\tlemma\tcount\n0\tn02084071\tdog\t12\n1\tn02121620\tcat\t7\n"
    assert vocab.read(path) == entries
    assert list(tmp_path.glob("*.tmp")) == []


def test_vocabulary_file_with_a_wrong_index_is_rejected(tmp_path):
    path = tmp_path / "vocabulary.tsv"
    path.write_text("index\tsynset\tlemma\tcount\n0\tn02084071\tdog\t12\n2\tn02121620\tcat\t7\n")
    with pytest.raises(ValueError, match=":3:"):
        vocab.read(path)
    path.write_text("synset\tcount\nn02084071\t12\n")
    with pytest.raises(ValueError, match="header"):
        vocab.read(path)


# -- in a build ----------------------------------------------------------------------------

def test_vocabulary_tsv_is_every_synset_by_image_count(shard_dir, corpus, wn):
    counts = image_counts(synsets_per_record(corpus, wn))
    rows = read_tsv(shard_dir / "vocabulary.tsv")
    assert rows[0] == ["index", "synset", "lemma", "count"]
    expected = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    assert [(r[1], int(r[3])) for r in rows[1:]] == expected
    assert [r[0] for r in rows[1:]] == [str(i) for i in range(len(expected))]
    assert [r[2] for r in rows[1:]] == [wn.lemma(sid) for sid, _ in expected]
    assert "brown_bear" in [r[2] for r in rows[1:]]
    manifest = json.loads((shard_dir / "manifest.json").read_text())
    assert manifest["num_classes"] == len(expected)
    # No bad image in this corpus, so the images per label in the shards are the counts.
    assert manifest["tag_counts"] == [n for _, n in expected]


def test_top_k_keeps_the_most_frequent_and_drops_images_left_without_a_label(tmp_path, small_corpus, wn):
    records = synsets_per_record(small_corpus, wn)
    counts = image_counts(records)
    top = [sid for sid, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:3]]
    out = tmp_path / "top3"
    manifest = build_shards(small_corpus, out, "vocab.top_k=3", "shards.samples=16")

    rows = read_tsv(out / "vocabulary.tsv")[1:]
    assert [r[1] for r in rows] == top
    assert [int(r[3]) for r in rows] == [counts[sid] for sid in top]
    without = sum(1 for ids in records if ids and not ids & set(top))
    assert without > 0  # the corpus has images whose tags are all outside the top 3
    assert manifest["dropped"]["no_vocab_tag"] == without
    kept = {f"{i:012d}": ids & set(top) for i, ids in enumerate(records) if ids & set(top)}
    found = samples(out)
    assert set(found) == set(kept)
    for key, meta in found.items():
        assert sorted(meta["labels"]) == sorted(top.index(sid) for sid in kept[key])
    assert manifest["num_samples"] == len(kept)
    assert manifest["tag_counts"] == [counts[sid] for sid in top]


def test_min_count_and_restrict_file(tmp_path, small_corpus, wn):
    records = synsets_per_record(small_corpus, wn)
    counts = image_counts(records)
    ranked = [sid for sid, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0]))]
    first, second, rare = ranked[0], ranked[2], ranked[-1]  # second: a label below the top 2
    min_count = counts[rare] + 1
    assert counts[second] >= min_count > counts[rare]
    absent = "n09845191"  # bear, the investor: a real synset no image of the corpus has
    assert absent not in counts
    restrict = tmp_path / "wnids.txt"
    restrict.write_text(f"# chosen labels\n{rare}\n{second}  second\n\n{absent}\n{first}\n")

    out = tmp_path / "restricted"
    manifest = build_shards(small_corpus, out, f"vocab.restrict={restrict}", f"vocab.min_count={min_count}")
    rows = read_tsv(out / "vocabulary.tsv")[1:]
    assert [r[1] for r in rows] == [first, second]
    assert manifest["num_classes"] == 2
    chosen = {first, second}
    assert manifest["dropped"]["no_vocab_tag"] == sum(1 for ids in records if ids and not ids & chosen)
    assert manifest["num_samples"] == sum(1 for ids in records if ids & chosen)
    for meta in samples(out).values():
        assert meta["labels"] and set(meta["labels"]) <= {0, 1}
