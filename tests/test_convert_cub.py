"""data_tools/convert/cub.py: a tiny CUB-200-2011 tree, its splits, boxes and label files."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
from helpers import CUB_CLASSES, assert_verifies, cub_tree, replace_line, run_convert, samples, save_jpeg, write_lines
from PIL import Image, ImageDraw

from data_tools.convert.listing import LayoutError
from data_tools.format import shards
from data_tools.labels import vocab


@pytest.mark.parametrize("split,train", [("train", 1), ("test", 0)])
def test_cub_split_labels_and_boxes(tmp_path, split, train):
    rows = cub_tree(tmp_path / "CUB_200_2011")
    manifest = run_convert("cub", tmp_path, tmp_path / "out", f"split={split}")  # the archive's parent folder
    mine = [r for r in rows if r["train"] == train]
    assert manifest["num_samples"] == len(mine)
    got = {meta["path"]: meta for meta in samples(tmp_path / "out")}
    assert got == {f"images/{r['path']}": {"labels": [r["label"]], "path": f"images/{r['path']}",
                                           "bbox": r["bbox"]} for r in mine}
    entries = vocab.read(tmp_path / "out" / "vocabulary.tsv")
    assert [(e.synset, e.lemma) for e in entries] == [(n, n[4:].replace("_", " ")) for n in CUB_CLASSES]
    assert_verifies(tmp_path / "out")


def red_box(jpeg: bytes) -> list[float]:
    """[x, y, w, h] bounding the red pixels of an image."""
    rgb = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"), dtype=np.int16)
    ys, xs = np.nonzero((rgb[..., 0] > 150) & (rgb[..., 1] < 100) & (rgb[..., 2] < 100))
    return [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]


def test_cub_boxes_follow_the_image_when_max_side_shrinks_or_exif_turns_it(tmp_path):
    # Large CUB images, each with a red bird where bounding_boxes.txt says (in the pixels of
    # the file as stored); the last one is stored on its side with EXIF orientation 6.
    rows = cub_tree(tmp_path / "cub", per_class=1)
    for r in rows:
        x, y, w, h = r["bbox"] = [40.0 + 30 * r["id"], 50.0, 160.0, 90.0 + 20 * r["id"]]
        im = Image.new("RGB", (640, 400), (90, 120, 90))
        ImageDraw.Draw(im).rectangle([x, y, x + w - 1, y + h - 1], fill=(220, 20, 20))
        exif = Image.Exif()
        exif[0x0112] = 6 if r is rows[-1] else 1
        im.save(tmp_path / "cub" / "images" / r["path"], quality=95, exif=exif)
    write_lines(tmp_path / "cub" / "bounding_boxes.txt", [f"{r['id']} " + " ".join(map(str, r["bbox"])) for r in rows])
    out = tmp_path / "out"
    run_convert("cub", tmp_path / "cub", out, "split=test", "images.max_side=160")
    found = {}
    for tar in sorted(out.glob("*.tar")):
        for _, files in shards.iter_samples(tar):
            found[json.loads(files["json"])["path"]] = (json.loads(files["json"])["bbox"], red_box(files["jpg"]))
    assert len(found) == len(rows)
    turned = f"images/{rows[-1]['path']}"
    for path, (bbox, red) in found.items():
        assert np.abs(np.array(bbox) - red).max() <= 1.5, (path, bbox, red)
    assert found[turned][0][2] < found[turned][0][3]  # the wide box of the file as stored stands upright


CUB_BREAKS = {
    "class_out_of_range": (lambda r: replace_line(r / "image_class_labels.txt", 4, "4 9"),
                           "image_class_labels.txt:4: 4 9"),
    "class_vs_folder": (lambda r: replace_line(r / "image_class_labels.txt", 2, "2 3"),
                        "disagrees with the class folders"),
    "image_id_out_of_range": (lambda r: replace_line(r / "bounding_boxes.txt", 9, "10 1 1 5 5"),
                              "bounding_boxes.txt:9: 10 1 1 5 5"),
    "malformed": (lambda r: replace_line(r / "train_test_split.txt", 5, "5"), "train_test_split.txt:5: 5"),
    "repeated": (lambda r: replace_line(r / "images.txt", 3, "2 001.Black_footed_Albatross/x.jpg"),
                 "repeated image id"),
    "listed_missing": (lambda r: next((r / "images").rglob("*_0002_3.jpg")).unlink(), "1 listed file"),
    "unlisted": (lambda r: save_jpeg(r / "images" / CUB_CLASSES[0] / "extra.jpg", 7), "not listed: .*extra.jpg"),
    "zero_width_box": (lambda r: replace_line(r / "bounding_boxes.txt", 6, "6 1.0 2.0 0.0 10.5"),
                       "bounding_boxes.txt:6: 6 1.0 2.0 0.0 10.5"),
    "no_classes_file": (lambda r: (r / "classes.txt").unlink(), "classes.txt not found"),
    "class_id_gap": (lambda r: replace_line(r / "classes.txt", 3, "5 003.Sooty_Albatross"), "classes.txt:3"),
}


@pytest.mark.parametrize("kind", CUB_BREAKS)
def test_cub_label_file_problems(tmp_path, kind):
    cub_tree(tmp_path / "cub")
    damage, message = CUB_BREAKS[kind]
    damage(tmp_path / "cub")
    with pytest.raises(LayoutError, match=message):
        run_convert("cub", tmp_path / "cub", tmp_path / "out")
