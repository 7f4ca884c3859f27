"""Hashtag -> WordNet 3.0 noun synset, checked against the real WordNet 3.0 files.

The expected ids come from the database itself (data.noun is read here independently of
data_tools.labels.wordnet): a synset id is 'n' + the byte offset of its line in data.noun.
"""
from __future__ import annotations

import json
import unicodedata
from collections import defaultdict
from pathlib import Path

import pytest

from data_tools.labels.wordnet import WordNet, find_wordnet_dir, squash

BROWN_BEAR = "n02132136"
BEAR_ANIMAL = "n02131653"
BEAR_INVESTOR = "n09845191"
DOG = "n02084071"
GOOSE = "n01855672"
CAFE = "n02935658"
UNKNOWN = ("#xyzzyq", "#instagood")  # the synthetic corpus' two tags outside WordNet


@pytest.fixture(scope="module")
def wn() -> WordNet:
    return WordNet()


@pytest.fixture(scope="module")
def data_noun() -> Path:
    return find_wordnet_dir() / "data.noun"


def synset_line(data_noun: Path, sid: str) -> str:
    """The data.noun line of a synset, found by seeking to its byte offset."""
    with open(data_noun, "rb") as f:
        f.seek(int(sid[1:]))
        return f.readline().decode("latin-1")


def synset_lemmas(data_noun: Path, sid: str) -> list[str]:
    fields = synset_line(data_noun, sid).split()
    assert fields[0] == sid[1:], f"{sid} is not a synset offset in data.noun"
    assert fields[2] == "n"
    count = int(fields[3], 16)
    return [fields[4 + 2 * i] for i in range(count)]


def all_synsets(data_noun: Path):
    """(synset id, [lemmas]) for every noun synset, parsed straight from data.noun."""
    with open(data_noun, encoding="latin-1") as f:
        for line in f:
            if line.startswith("  "):
                continue
            offset, _, _, count, rest = line.split(" ", 4)
            words = rest.split(" ", 2 * int(count, 16))
            yield f"n{int(offset):08d}", words[0: 2 * int(count, 16): 2]


def index_senses(lemma: str) -> list[str]:
    """Synset ids of an index.noun lemma, in WordNet's sense order (most frequent first)."""
    with open(find_wordnet_dir() / "index.noun", encoding="latin-1") as f:
        for line in f:
            fields = line.split()
            if fields and fields[0] == lemma and not line.startswith("  "):
                synsets, pointers = int(fields[2]), int(fields[3])
                return [f"n{int(o):08d}" for o in fields[6 + pointers: 6 + pointers + synsets]]
    raise AssertionError(f"{lemma} not in index.noun")


# -- synonyms ------------------------------------------------------------------------------

@pytest.mark.parametrize("tag", ["#brownbear", "#ursusarctos", "#BrownBear", "#URSUS_ARCTOS", "brown_bear",
                                 "Brown Bear", "brown-bear", "#Ursus-Arctos", "brown\u00a0bear"])
def test_brown_bear_synonyms_reach_one_synset(wn, data_noun, tag):
    assert wn.lookup(tag) == BROWN_BEAR
    lemmas = synset_lemmas(data_noun, BROWN_BEAR)
    assert "brown_bear" in lemmas and "Ursus_arctos" in lemmas  # the id really is that synset
    assert wn.lemma(BROWN_BEAR) == "brown_bear"


def test_every_lemma_with_one_meaning_maps_to_its_synset(wn, data_noun):
    """Every noun lemma, with spaces/underscores/hyphens squashed, reaches its synset
    whenever that squashed key names exactly one synset in all of WordNet."""
    synsets_of_key = defaultdict(set)
    keyed = []
    for sid, lemmas in all_synsets(data_noun):
        for lemma in lemmas:
            key = squash(lemma)
            synsets_of_key[key].add(sid)
            keyed.append((sid, lemma, key))
    checked, wrong = 0, []
    for sid, lemma, key in keyed:
        if key and len(synsets_of_key[key]) == 1:
            # The three spellings of a multi-word lemma, taken in turn (one lookup per lemma).
            form = ("#" + lemma.replace("_", ""), lemma.replace("_", " "), lemma.replace("_", "-"))[checked % 3]
            checked += 1
            if wn.lookup(form) != sid:
                wrong.append((form, sid, wn.lookup(form)))
    assert checked > 100_000  # WordNet 3.0: 101,543 of its 146,347 noun lemmas name one synset
    assert wrong == [], f"{len(wrong)} lemma forms miss their synset, e.g. {wrong[:5]}"


def test_every_known_id_is_a_data_noun_synset(wn, data_noun):
    for tag in ("#dog", "#bear", "#brownbear", "#cafe", "#sunset", "#NewYork", "#geese"):
        sid = wn.lookup(tag)
        assert sid is not None and sid in wn
        assert synset_lemmas(data_noun, sid)  # seeking to the offset lands on that synset


# -- several senses ------------------------------------------------------------------------

@pytest.mark.parametrize("tag", ["#bear", "#Bear", "#BEAR", "bear"])
def test_bear_is_the_animal_not_the_investor(wn, data_noun, tag):
    # Both synsets exist and both hold the lemma 'bear': the test can tell them apart.
    assert "bear" in synset_lemmas(data_noun, BEAR_ANIMAL)
    assert "bear" in synset_lemmas(data_noun, BEAR_INVESTOR)
    assert wn.lookup(tag) == BEAR_ANIMAL


@pytest.mark.parametrize("word", ["bank", "mouse", "jaguar", "apple", "glasses", "news"])
def test_ambiguous_word_takes_its_most_frequent_sense(wn, word):
    senses = index_senses(word)
    assert wn.lookup("#" + word) == senses[0]


def is_instance(data_noun: Path, sid: str) -> bool:
    """An instance (a proper name): its pointers hold an instance hypernym, '@i'."""
    return "@i" in synset_line(data_noun, sid).split(" | ")[0].split()


@pytest.mark.parametrize("tag,common,person,meaning", [
    ("#sax", "n04141076", "n11283158", " saxophone "),
    ("#drake", "n01847000", "n10942866", "adult male of a wild or domestic duck")])
def test_without_frequency_counts_a_common_noun_beats_a_person(wn, data_noun, tag, common, person, meaning):
    # WordNet lists Adolphe Sax and Francis Drake first; no sense of either lemma is counted.
    assert index_senses(tag[1:]) == [person, common]
    assert is_instance(data_noun, person) and not is_instance(data_noun, common)
    assert meaning in synset_line(data_noun, common)
    assert wn.lookup(tag) == common


def test_where_frequency_counts_decide_a_proper_name_keeps_sense_1(wn, data_noun):
    # 'brazil': the country is counted first (tagsense_cnt 1), the brazil nut comes second.
    country, nut = index_senses("brazil")
    assert is_instance(data_noun, country) and "brazil_nut" in synset_lemmas(data_noun, nut)
    assert wn.lookup("#brazil") == country


def test_lemmas_squashing_to_one_key_follow_the_documented_tie_rule(wn, data_noun):
    # 'air_wave' (1 tagged sense) and 'airwave' (0): more tagged senses wins.
    assert "air_wave" in synset_lemmas(data_noun, "n07347373")
    assert "airwave" in synset_lemmas(data_noun, "n06255354")
    assert wn.lookup("#airwave") == "n07347373"
    # 'arm_guard' and 'armguard', both sense 1 and 0 tagged senses: alphabetically first lemma.
    assert "arm_guard" in synset_lemmas(data_noun, "n02738859")
    assert "armguard" in synset_lemmas(data_noun, "n02888270")
    assert wn.lookup("#armguard") == "n02738859"


# -- tags outside WordNet ------------------------------------------------------------------

@pytest.mark.parametrize("tag", [*UNKNOWN, "#qqqzzzxxx", "#", "", "#\u200b", "#\U0001f43b", "   "])
def test_unknown_tag_is_none(wn, tag):
    assert wn.lookup(tag) is None


def test_unknown_tags_are_counted_in_the_manifest(wn, corpus, shard_dir):
    rows = [json.loads(line) for line in corpus.read_text().splitlines()]
    for tag in {t for row in rows for t in row["tags"]}:
        assert (wn.lookup(tag) is None) == (tag in UNKNOWN), tag
    unknown = sum(tag in UNKNOWN for row in rows for tag in row["tags"])
    only_unknown = sum(all(tag in UNKNOWN for tag in row["tags"]) for row in rows)
    assert unknown > 0 and only_unknown > 0  # the corpus exercises both counters
    manifest = json.loads((shard_dir / "manifest.json").read_text())
    assert manifest["dropped"]["tags_not_in_wordnet"] == unknown
    assert manifest["dropped"]["no_wordnet_tag"] == only_unknown
    assert manifest["num_samples"] == len(rows) - only_unknown


# -- plurals -------------------------------------------------------------------------------

@pytest.mark.parametrize("plural, singular", [("#dogs", "#dog"), ("#geese", "#goose"), ("#mice", "#mouse"),
                                              ("#churches", "#church"), ("#boxes", "#box"),
                                              ("#ponies", "#pony"), ("#women", "#woman"), ("#Cats", "#cat")])
def test_plural_reaches_the_singular(wn, plural, singular):
    assert wn.lookup(singular) is not None
    assert wn.lookup(plural) == wn.lookup(singular)


def test_plural_examples_of_the_issue(wn, data_noun):
    assert wn.lookup("#dogs") == DOG
    assert wn.lookup("#geese") == GOOSE
    assert "dog" in synset_lemmas(data_noun, DOG)
    assert "goose" in synset_lemmas(data_noun, GOOSE)


def test_a_plural_that_is_itself_a_lemma_keeps_its_own_synset(wn):
    # 'glasses' (spectacles) is a lemma of its own: not glass, the material.
    assert wn.lookup("#glasses") == index_senses("glasses")[0]
    assert wn.lookup("#glasses") not in index_senses("glass")


# -- odd Unicode ---------------------------------------------------------------------------

@pytest.mark.parametrize("tag", ["#Café", "#CAFÉ", unicodedata.normalize("NFD", "#Café"), "#cafe", "#ca\u200bfe",
                                 "#\uff43\uff41\uff46\uff45", "\uff03Caf\u00e9"])
def test_cafe_spellings(wn, data_noun, tag):
    assert "cafe" in synset_lemmas(data_noun, CAFE)
    assert wn.lookup(tag) == CAFE


@pytest.mark.parametrize("tag", ["#do\u200bg", "#\ufeffdog", "#do\u200dg", "#dog\u200c", "#\uff24\uff4f\uff47",
                                 "#\uff24\uff2f\uff27\uff33", "#DOG\u2060", "#\U0001d41d\U0001d428\U0001d420"])
def test_zero_width_and_full_width_dog(wn, tag):
    assert wn.lookup(tag) == DOG


def test_dotted_capital_i(wn, data_noun):
    sid = wn.lookup("#\u0130STANBUL")  # Turkish dotted capital I
    assert sid is not None and "Istanbul" in synset_lemmas(data_noun, sid)
