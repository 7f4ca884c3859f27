"""The demo's generated corpus (launch.fixtures.scenes): tags follow the concepts, Zipfian
frequencies, planted leaks, determinism, and the shards built from it."""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from helpers import build_shards
from PIL import Image, ImageOps

from data_tools.build import BuildConfig, build
from data_tools.common.config import build as make_config
from data_tools.labels import vocab
from data_tools.labels.wordnet import WordNet
from launch.fixtures.concepts import OBJECTS, POPULAR, SCENES, SceneConfig, target_classes
from launch.fixtures.scenes import generate

SMALL = SceneConfig(train=1000, heldout=60, target_train=2, target_test=3, leaks=5, size=40, seed=7)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("scenes"), SMALL, progress=False)


@pytest.fixture(scope="module")
def wordnet():
    return WordNet()


def rows(manifest: Path) -> list[dict]:
    return [json.loads(line) for line in manifest.read_text().splitlines()]


def concept_of_synset(wordnet: WordNet) -> dict[str, str]:
    return {wordnet.lookup(c.name): c.name for c in OBJECTS + SCENES}


def test_every_spelling_of_a_concept_is_one_synset(wordnet):
    for concept in OBJECTS + SCENES:
        synsets = {tag: wordnet.lookup(tag) for tag in concept.tags}
        assert set(synsets.values()) == {wordnet.lookup(concept.name)}, f"{concept.name}: {synsets}"
    assert len(set(concept_of_synset(wordnet))) == len(OBJECTS) + len(SCENES), "two concepts share a synset"
    # The noise the brief asks for is really there: synonyms with different letters, and
    # popular tags both inside and outside WordNet.
    assert wordnet.lookup("#ursusarctos") == wordnet.lookup("#brownbear")
    known = [t for t in POPULAR if wordnet.lookup(t)]
    assert known and len(known) < len(POPULAR)
    assert not set(map(wordnet.lookup, known)) & set(concept_of_synset(wordnet)), "a popular tag names a concept"


def test_tags_decode_back_to_the_concepts(corpus, wordnet):
    to_concept = concept_of_synset(wordnet)
    tagged = present = unknown = popular = 0
    for row in rows(corpus.train) + rows(corpus.heldout):
        truth = set(row["concepts"]["objects"]) | ({row["concepts"]["scene"]} - {None})
        decoded = {to_concept[s] for s in map(wordnet.lookup, row["tags"]) if s in to_concept}
        assert decoded <= truth, f"{row['path']}: tags {row['tags']} name concepts not in the image {truth}"
        objects = set(row["concepts"]["objects"])
        tagged += len(decoded & objects)
        present += len(objects)
        unknown += sum(wordnet.lookup(t) is None for t in row["tags"])
        popular += sum(t in POPULAR for t in row["tags"])
    # Missing tags: about SceneConfig.tag_keep of the objects are tagged, not all of them.
    assert abs(tagged / present - SMALL.tag_keep) < 0.04, tagged / present
    assert unknown > 0 and popular > 0
    spellings = Counter(t for row in rows(corpus.train) for t in row["tags"])
    assert spellings["#ursusarctos"] and spellings["#brownbear"] and spellings["#Dog"] and spellings["#dogs"]


def zipf_slope(counts: list[int]) -> float:
    counts = sorted(counts, reverse=True)
    ranks = np.arange(1, len(counts) + 1)
    return float(np.polyfit(np.log(ranks), np.log(counts), 1)[0])


def test_concepts_and_tags_are_zipfian(corpus, wordnet):
    train = rows(corpus.train)
    objects = Counter(o for row in train for o in row["concepts"]["objects"])
    assert len(objects) == len(OBJECTS)
    # Drawing up to three distinct objects per image flattens the head a little.
    assert -1.2 < zipf_slope(list(objects.values())) < -0.6
    concept = set(concept_of_synset(wordnet))
    tags = Counter(s for row in train for s in {wordnet.lookup(t) for t in row["tags"]} & concept)
    assert -1.2 < zipf_slope(list(tags.values())) < -0.5


def test_zipf_exponent_is_the_configured_one(tmp_path):
    flat = generate(tmp_path, SceneConfig(train=600, heldout=1, target_train=1, target_test=1, leaks=0,
                                          size=32, zipf=0.0), progress=False)
    objects = Counter(o for row in rows(flat.train) for o in row["concepts"]["objects"])
    assert abs(zipf_slope(list(objects.values()))) < 0.25


def undo(leak: Image.Image, transform: dict) -> Image.Image:
    x0, y0, x1, y1 = transform["crop"]
    if transform["flip"]:
        leak = ImageOps.mirror(leak)
    return leak.resize((x1 - x0, y1 - y0), Image.BICUBIC)


def distance(a: Image.Image, b: Image.Image) -> float:
    """Mean absolute difference at 16×16, where sensor noise and JPEG artefacts average out."""
    a, b = (np.asarray(im.resize((16, 16), Image.BOX), np.float32) for im in (a, b))
    return float(np.abs(a - b).mean())


def test_planted_leaks_are_transformed_copies_of_target_test_images(corpus):
    assert len(corpus.leaks) == SMALL.leaks
    in_corpus = {row["path"] for row in rows(corpus.train)}
    tests = sorted(corpus.target_test.rglob("*.jpg"))
    for leak in corpus.leaks:
        assert leak["path"].removeprefix("hashtags/") in in_corpus
        source = corpus.root / leak["target"]
        assert source in tests
        planted = Image.open(corpus.root / leak["path"]).convert("RGB")
        x0, y0, x1, y1 = leak["transform"]["crop"]
        assert (x1 - x0) * (y1 - y0) < 0.95 * SMALL.size ** 2, "not cropped"
        restored = undo(planted, leak["transform"])
        near = distance(restored, Image.open(source).convert("RGB").crop((x0, y0, x1, y1)))
        others = [distance(restored, Image.open(p).convert("RGB").crop((x0, y0, x1, y1)))
                  for p in tests if p != source]
        assert near < 10 and near < min(others) / 4, (leak, near, min(others))
    # The leak carries its objects' tags, like a repost would, and only those.
    by_path = {row["path"]: row for row in rows(corpus.train)}
    for leak in corpus.leaks:
        row = by_path[leak["path"].removeprefix("hashtags/")]
        assert row["concepts"]["scene"] is None
        assert sorted(row["concepts"]["objects"]) == sorted(Path(leak["target"]).parent.name.split("+"))
    written = json.loads((corpus.root / "leaks.json").read_text())
    assert written["leaks"] == corpus.leaks and written["config"]["seed"] == SMALL.seed


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_corpus(tmp_path):
    tiny = SceneConfig(train=30, heldout=10, target_train=1, target_test=2, leaks=3, size=32, seed=3)
    a = generate(tmp_path / "a", tiny, progress=False)
    b = generate(tmp_path / "b", tiny, progress=False)
    assert digest(a.root) == digest(b.root) and len(digest(a.root)) > 60
    c = generate(tmp_path / "c", SceneConfig(**{**tiny.__dict__, "seed": 4}), progress=False)
    assert digest(c.root).keys() == digest(a.root).keys() and digest(c.root) != digest(a.root)


@pytest.mark.parametrize("change, message", [
    (dict(train=0), "'train' = 0"), (dict(tag_keep=1.5), "'tag_keep' = 1.5"), (dict(size=8), "'size' = 8"),
    (dict(zipf=-1.0), "'zipf' = -1.0"), (dict(leaks=31, target_test=3), "leaks=31 exceeds the 30"),
])
def test_bad_settings_are_refused_before_anything_is_written(tmp_path, change, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        generate(tmp_path / "out", SceneConfig(**change), progress=False)
    assert not (tmp_path / "out").exists()


def test_shards_heldout_with_the_training_vocabulary_and_target_folders(corpus, tmp_path):
    train = build_shards(corpus.train, tmp_path / "train")
    held = build_shards(corpus.heldout, tmp_path / "held", f"vocab.reuse={tmp_path / 'train'}")
    assert [e.synset for e in vocab.read(tmp_path / "held" / "vocabulary.tsv")] == \
           [e.synset for e in vocab.read(tmp_path / "train" / "vocabulary.tsv")]
    assert held["num_classes"] == train["num_classes"] and held["num_samples"] > 0
    assert train["dropped"]["tags_not_in_wordnet"] > 0  # #instagood and friends
    cfg = make_config(BuildConfig, [], [f"input.imagefolder={corpus.target_test}", f"output={tmp_path / 'test'}",
                                        "progress=false", "workers=1"])
    test = build(cfg)
    assert test["label_type"] == "single" and test["num_classes"] == len(target_classes())
    assert test["num_samples"] == len(target_classes()) * SMALL.target_test


def test_reuse_refuses_a_missing_vocabulary_and_restrict(tmp_path, corpus):
    with pytest.raises(FileNotFoundError, match="vocabulary not found"):
        build_shards(corpus.heldout, tmp_path / "held", f"vocab.reuse={tmp_path / 'nowhere'}")
    with pytest.raises(ValueError, match="at most one of 'vocab.reuse' and 'vocab.restrict'"):
        build_shards(corpus.heldout, tmp_path / "held2", f"vocab.reuse={tmp_path}", f"vocab.restrict={tmp_path}")
