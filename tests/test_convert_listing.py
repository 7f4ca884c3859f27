"""data_tools/convert/listing.py: a split checked against its published count: complete,
partial (a warning, or refused with strict=true) or too many."""
from __future__ import annotations

from pathlib import Path

import pytest
from helpers import cub_tree, places_tree, run_convert

from data_tools.common.config import build as make_config
from data_tools.convert import ConvertConfig, places
from data_tools.convert.listing import Item, LayoutError, Listing, completeness, partial_message


def test_partial_val_names_the_missing_files(tmp_path):
    places_tree(tmp_path / "places")
    cfg = make_config(ConvertConfig, [], ["dataset=places", f"root={tmp_path / 'places'}", "split=val",
                                          f"output={tmp_path / 'out'}", "progress=false"])
    listing = places.read(tmp_path / "places", cfg)
    text = partial_message(listing, completeness(listing))
    assert "places val is partial: 5 of 36,500 images (36,495 missing)" in text
    assert "first missing: Places365_val_00000006.jpg, Places365_val_00000007.jpg" in text


def listing_of(count: int, classes: int, published: tuple[int, int]) -> Listing:
    names = [f"c{i}" for i in range(classes)]
    items = [Item(f"{i}.jpg", names[i % classes]) for i in range(count)]
    return Listing("cub", "train", Path("."), names, {}, items, published)


def test_published_counts_complete_partial_and_too_many():
    assert completeness(listing_of(6, 3, (6, 3)))["complete"] is True
    assert completeness(listing_of(5, 3, (6, 3)))["complete"] is False
    with pytest.raises(LayoutError, match="7 images, the published split has 6"):
        completeness(listing_of(7, 3, (6, 3)))
    with pytest.raises(LayoutError, match="4 classes, the published dataset has 3"):
        completeness(listing_of(6, 4, (6, 3)))


def test_partial_split_warns_and_strict_refuses(tmp_path, capsys):
    cub_tree(tmp_path / "cub")
    manifest = run_convert("cub", tmp_path / "cub", tmp_path / "out")
    assert manifest["source"]["complete"] is False
    assert "cub train is partial: 6 of 5,994 images (5,988 missing)" in capsys.readouterr().err
    with pytest.raises(LayoutError, match="partial.*strict=true"):
        run_convert("cub", tmp_path / "cub", tmp_path / "strict", "strict=true")
    assert not (tmp_path / "strict").exists()
