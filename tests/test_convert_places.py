"""data_tools/convert/places.py: a tiny Places365 tree, its nested categories and label files."""
from __future__ import annotations

import pytest
from helpers import PLACES, assert_verifies, labels_by_path, places_tree, replace_line, run_convert, save_jpeg

from data_tools.convert.listing import LayoutError
from data_tools.labels import vocab


def test_places_nested_categories_train_and_val(tmp_path):
    train, val = places_tree(tmp_path / "places")
    run_convert("places", tmp_path / "places", tmp_path / "train")
    assert labels_by_path(tmp_path / "train") == train
    entries = vocab.read(tmp_path / "train" / "vocabulary.tsv")
    assert [(e.synset, e.lemma) for e in entries] == [(n, n[3:]) for n in PLACES]
    run_convert("places", tmp_path / "places", tmp_path / "val", "split=val", "image_root=val_256")
    assert labels_by_path(tmp_path / "val") == val
    assert_verifies(tmp_path / "val")


def test_places_large_images_and_an_ambiguous_image_folder(tmp_path):
    train, _ = places_tree(tmp_path / "p", "data_large_standard")
    run_convert("places", tmp_path / "p", tmp_path / "out")
    assert labels_by_path(tmp_path / "out") == train
    save_jpeg(tmp_path / "p" / "val_large" / "Places365_val_00000001.jpg", seed=1)
    with pytest.raises(LayoutError, match="val_256 and val_large: choose one with image_root"):
        run_convert("places", tmp_path / "p", tmp_path / "val", "split=val")
    run_convert("places", tmp_path / "p", tmp_path / "val", "split=val", "image_root=val_256")


PLACES_BREAKS = {
    "index_out_of_range": ("train", lambda r: replace_line(r / "places365_train_standard.txt", 1,
                                                           "/a/airfield/00000001.jpg 365"), "outside 0..2"),
    "folder_vs_category": ("train", lambda r: replace_line(r / "places365_train_standard.txt", 3,
                                                           "/b/bus_station/indoor/00000001.jpg 2"),
                           "folder is not the category of their index"),
    "val_listed_missing": ("val", lambda r: (r / "val_256" / "Places365_val_00000002.jpg").unlink(),
                           "missing: .*Places365_val_00000002.jpg"),
    "category_gap": ("val", lambda r: replace_line(r / "categories_places365.txt", 2, "/b/bus_station/indoor 7"),
                     "indices must be 0..2"),
}


@pytest.mark.parametrize("kind", PLACES_BREAKS)
def test_places_label_file_problems(tmp_path, kind):
    places_tree(tmp_path / "p")
    split, damage, message = PLACES_BREAKS[kind]
    damage(tmp_path / "p")
    with pytest.raises(LayoutError, match=message):
        run_convert("places", tmp_path / "p", tmp_path / "out", f"split={split}")
