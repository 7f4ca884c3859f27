"""`wsl data convert`: tiny ImageNet, CUB and Places trees written in their distributed layouts."""
from __future__ import annotations

import io
import json
import random
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from helpers import photo, run_cli
from PIL import Image, ImageDraw

from data_tools.common.config import build as make_config
from data_tools.convert import ConvertConfig, convert, places
from data_tools.convert.listing import Item, LayoutError, Listing, completeness, partial_message
from data_tools.format import shards
from data_tools.format.manifest import merge
from data_tools.format.verify import verify
from data_tools.labels import vocab

# tench, goldfish, great white shark: sorted-wnid order is label order.
WNIDS = ["n01440764", "n01443537", "n01484850"]
LEMMAS = ["tench", "goldfish", "great_white_shark"]
# The devkit numbers classes in its own order, not sorted-wnid order; 1001 is a non-leaf synset.
DEVKIT_IDS = {1: "n01484850", 2: "n01440764", 3: "n01443537", 1001: "n00001740"}
VAL_LABELS = ["n01484850", "n01440764", "n01443537", "n01440764", "n01484850", "n01443537", "n01443537"]


def save_jpeg(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    photo(np.random.default_rng(seed), 40, 32).save(path, quality=85)


def write_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))
    return path


def run_convert(dataset: str, root: Path, out: Path, *overrides: str) -> dict:
    cfg = make_config(ConvertConfig, [], [f"dataset={dataset}", f"root={root}", f"output={out}", "progress=false",
                                          "workers=1", "shards.samples=4", *overrides])
    return convert(cfg)


def samples(out: Path) -> list[dict]:
    """Every sample's json, over all shards."""
    return [json.loads(files["json"]) for tar in sorted(out.glob("*.tar"))
            for _, files in shards.iter_samples(tar)]


def labels_by_path(out: Path) -> dict[str, int]:
    found = {}
    for meta in samples(out):
        assert len(meta["labels"]) == 1
        found[meta["path"]] = meta["labels"][0]
    return found


def assert_verifies(out: Path) -> None:
    assert verify(str(out), workers=1, progress=False) == []


# -- ImageNet -------------------------------------------------------------------------------

def imagenet_train(root: Path, base: str = "train") -> dict[str, str]:
    """3 classes x 3 images; returns relative path -> wnid."""
    truth = {}
    for c, wnid in enumerate(WNIDS):
        for k in range(3):
            rel = f"{base}/{wnid}/{wnid}_{100 + k}.JPEG"
            save_jpeg(root / rel, seed=10 * c + k)
            truth[rel] = wnid
    return truth


def imagenet_flat_val(root: Path, base: str = "val") -> dict[str, str]:
    truth = {}
    for k, wnid in enumerate(VAL_LABELS, 1):
        rel = f"{base}/ILSVRC2012_val_{k:08d}.JPEG"
        save_jpeg(root / rel, seed=100 + k)
        truth[rel] = wnid
    return truth


def write_solution(root: Path, labels: list[str] = VAL_LABELS) -> Path:
    rows = [f"ILSVRC2012_val_{k:08d},{wnid} 1 2 30 20 {wnid} 3 4 20 10" for k, wnid in enumerate(labels, 1)]
    random.Random(0).shuffle(rows)  # the distributed file is not in image order
    return write_lines(root / "LOC_val_solution.csv", ["ImageId,PredictionString", *rows])


def write_devkit(root: Path, labels: list[str] = VAL_LABELS) -> Path:
    data = root / "ILSVRC2012_devkit_t12" / "data"
    data.mkdir(parents=True, exist_ok=True)
    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height",
              "num_train_images"]
    synsets = np.zeros((len(DEVKIT_IDS), 1), dtype=[(f, "O") for f in fields])
    for row, (i, wnid) in enumerate(DEVKIT_IDS.items()):
        leaf = i <= 1000
        values = [i, wnid, wnid, "a gloss", 0 if leaf else 3, np.zeros((1, 0)) if leaf else np.array([1, 2, 3]),
                  0 if leaf else 4, 1300 if leaf else 0]
        for f, value in zip(fields, values):
            synsets[row, 0][f] = value
    scipy.io.savemat(data / "meta.mat", {"synsets": synsets})
    id_of = {wnid: i for i, wnid in DEVKIT_IDS.items()}
    write_lines(data / "ILSVRC2012_validation_ground_truth.txt", [str(id_of[w]) for w in labels])
    return data


def test_imagenet_train_classes_labels_and_lemmas(tmp_path):
    truth = imagenet_train(tmp_path / "in")
    manifest = run_convert("imagenet", tmp_path / "in", tmp_path / "out")
    assert manifest["num_samples"] == 9 and manifest["num_classes"] == 3
    assert manifest["label_type"] == "single" and manifest["num_shards"] == 3
    entries = vocab.read(tmp_path / "out" / "vocabulary.tsv")
    assert [e.synset for e in entries] == WNIDS
    assert [e.lemma for e in entries] == LEMMAS
    assert [e.count for e in entries] == [3, 3, 3]
    assert labels_by_path(tmp_path / "out") == {rel: WNIDS.index(w) for rel, w in truth.items()}
    assert all(set(meta) == {"labels", "path"} for meta in samples(tmp_path / "out"))
    assert manifest["source"] == {"dataset": "imagenet", "split": "train", "images": 9,
                                  "published_images": 1_281_167, "classes": 3, "published_classes": 1000,
                                  "complete": False}
    assert list(tmp_path.joinpath("out").glob("train-*.tar"))
    assert_verifies(tmp_path / "out")


def test_imagenet_flat_val_from_unsorted_solution_csv(tmp_path):
    imagenet_train(tmp_path / "in")
    truth = imagenet_flat_val(tmp_path / "in")
    write_solution(tmp_path / "in")
    manifest = run_convert("imagenet", tmp_path / "in", tmp_path / "out", "split=val")
    assert manifest["num_samples"] == len(VAL_LABELS)
    assert labels_by_path(tmp_path / "out") == {rel: WNIDS.index(w) for rel, w in truth.items()}
    assert sorted(p.name for p in (tmp_path / "out").glob("*.tar"))[0] == "val-000000.tar"
    assert_verifies(tmp_path / "out")


def test_imagenet_flat_val_from_devkit_ids_not_in_wnid_order(tmp_path):
    truth = imagenet_flat_val(tmp_path / "in")  # no train folder: meta.mat alone gives the classes
    write_devkit(tmp_path / "in")
    run_convert("imagenet", tmp_path / "in", tmp_path / "out", "split=val")
    assert [e.synset for e in vocab.read(tmp_path / "out" / "vocabulary.tsv")] == WNIDS
    assert labels_by_path(tmp_path / "out") == {rel: WNIDS.index(w) for rel, w in truth.items()}
    assert_verifies(tmp_path / "out")


def test_imagenet_val_in_class_folders_checked_against_both_label_files(tmp_path):
    root = tmp_path / "in"
    truth = {}
    for k, wnid in enumerate(VAL_LABELS, 1):
        rel = f"val/{wnid}/ILSVRC2012_val_{k:08d}.JPEG"
        save_jpeg(root / rel, seed=k)
        truth[rel] = wnid
    write_solution(root)
    write_devkit(root)
    run_convert("imagenet", root, tmp_path / "out", "split=val")
    assert labels_by_path(tmp_path / "out") == {rel: WNIDS.index(w) for rel, w in truth.items()}


def test_imagenet_kaggle_layout_with_synset_mapping(tmp_path):
    root = tmp_path / "in"
    base = "ILSVRC/Data/CLS-LOC"
    imagenet_train(root, f"{base}/train")
    truth = imagenet_flat_val(root, f"{base}/val")
    write_solution(root)
    # The mapping lists a fourth class the tree has no image of: it keeps its index.
    write_lines(root / "LOC_synset_mapping.txt", ["n01491361 tiger shark, Galeocerdo cuvieri",
                                                  *(f"{w} {lemma}" for w, lemma in zip(WNIDS, LEMMAS))])
    manifest = run_convert("imagenet", root, tmp_path / "out", "split=val")
    classes = WNIDS + ["n01491361"]
    assert [e.synset for e in vocab.read(tmp_path / "out" / "vocabulary.tsv")] == classes
    assert manifest["tag_counts"] == [2, 3, 2, 0]
    assert labels_by_path(tmp_path / "out") == {rel: classes.index(w) for rel, w in truth.items()}


# -- CUB ------------------------------------------------------------------------------------

CUB_CLASSES = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]


def cub_tree(root: Path, per_class: int = 3) -> list[dict]:
    """CUB_200_2011 with 1-based ids; returns one row per image (id, path, class index, train, bbox)."""
    rows = []
    for c, name in enumerate(CUB_CLASSES):
        for k in range(per_class):
            image_id = len(rows) + 1
            path = f"{name}/{name.split('.')[1]}_{k:04d}_{image_id}.jpg"
            save_jpeg(root / "images" / path, seed=image_id)
            rows.append({"id": image_id, "path": path, "label": c, "train": int(k != 0),
                         "bbox": [float(image_id), 2.0, 20.0 + c, 10.5]})
    write_lines(root / "classes.txt", [f"{i} {name}" for i, name in enumerate(CUB_CLASSES, 1)])
    write_lines(root / "images.txt", [f"{r['id']} {r['path']}" for r in rows])
    write_lines(root / "image_class_labels.txt", [f"{r['id']} {r['label'] + 1}" for r in rows])
    write_lines(root / "train_test_split.txt", [f"{r['id']} {r['train']}" for r in rows])
    write_lines(root / "bounding_boxes.txt", [f"{r['id']} " + " ".join(map(str, r["bbox"])) for r in rows])
    return rows


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


def test_corrupt_image_is_skipped_and_counted(tmp_path):
    rows = cub_tree(tmp_path / "cub")
    broken = tmp_path / "cub" / "images" / rows[1]["path"]
    broken.write_bytes(broken.read_bytes()[:200])
    manifest = run_convert("cub", tmp_path / "cub", tmp_path / "out")
    assert manifest["num_samples"] == 5
    assert manifest["bad_samples"] == {"truncated": 1}
    assert manifest["bad_examples"][0]["path"] == str(broken)
    assert_verifies(tmp_path / "out")


# -- Places365 ------------------------------------------------------------------------------

PLACES = ["/a/airfield", "/b/bus_station/indoor", "/b/bus_station/outdoor"]


def places_tree(root: Path, image_dir: str = "data_256_standard") -> tuple[dict, dict]:
    write_lines(root / "categories_places365.txt", [f"{name} {i}" for i, name in enumerate(PLACES)])
    train, val = {}, {}
    for c, name in enumerate(PLACES):
        for k in range(1, 3):
            rel = f"{name}/{k:08d}.jpg"
            save_jpeg(root / image_dir / rel.lstrip("/"), seed=10 * c + k)
            train[f"{image_dir}{rel}"] = c
    for k, c in enumerate([2, 0, 1, 1, 2], 1):
        save_jpeg(root / "val_256" / f"Places365_val_{k:08d}.jpg", seed=50 + k)
        val[f"val_256/Places365_val_{k:08d}.jpg"] = c
    write_lines(root / "places365_train_standard.txt",
                [f"{rel[len(image_dir):]} {c}" for rel, c in train.items()])
    write_lines(root / "places365_val.txt", [f"{Path(rel).name} {c}" for rel, c in val.items()])
    return train, val


def test_places_nested_categories_train_and_val(tmp_path):
    train, val = places_tree(tmp_path / "places")
    run_convert("places", tmp_path / "places", tmp_path / "train")
    assert labels_by_path(tmp_path / "train") == train
    entries = vocab.read(tmp_path / "train" / "vocabulary.tsv")
    assert [(e.synset, e.lemma) for e in entries] == [(n, n[3:]) for n in PLACES]
    run_convert("places", tmp_path / "places", tmp_path / "val", "split=val", "image_root=val_256")
    assert labels_by_path(tmp_path / "val") == val
    assert_verifies(tmp_path / "val")


def test_partial_val_names_the_missing_files(tmp_path):
    places_tree(tmp_path / "places")
    cfg = make_config(ConvertConfig, [], ["dataset=places", f"root={tmp_path / 'places'}", "split=val",
                                          f"output={tmp_path / 'out'}", "progress=false"])
    listing = places.read(tmp_path / "places", cfg)
    text = partial_message(listing, completeness(listing))
    assert "places val is partial: 5 of 36,500 images (36,495 missing)" in text
    assert "first missing: Places365_val_00000006.jpg, Places365_val_00000007.jpg" in text


def test_places_large_images_and_an_ambiguous_image_folder(tmp_path):
    train, _ = places_tree(tmp_path / "p", "data_large_standard")
    run_convert("places", tmp_path / "p", tmp_path / "out")
    assert labels_by_path(tmp_path / "out") == train
    save_jpeg(tmp_path / "p" / "val_large" / "Places365_val_00000001.jpg", seed=1)
    with pytest.raises(LayoutError, match="val_256 and val_large: choose one with image_root"):
        run_convert("places", tmp_path / "p", tmp_path / "val", "split=val")
    run_convert("places", tmp_path / "p", tmp_path / "val", "split=val", "image_root=val_256")


# -- label files that disagree with the disk: one clear error quoting the first lines -------

def break_imagenet(kind: str, root: Path) -> None:
    imagenet_train(root)
    imagenet_flat_val(root)
    val = root / "val"
    if kind == "listed_missing":
        write_solution(root)
        (val / "ILSVRC2012_val_00000003.JPEG").unlink()
    elif kind == "unlisted":
        write_solution(root)
        save_jpeg(val / "ILSVRC2012_val_00000099.JPEG", seed=1)
    elif kind == "csv_bad_wnid":
        write_solution(root, VAL_LABELS[:2] + ["tench"] + VAL_LABELS[3:])
    elif kind == "csv_header":
        path = write_solution(root)
        path.write_text(path.read_text().replace("ImageId,PredictionString", "id,label"))
    elif kind == "devkit_id_out_of_range":
        write_devkit(root)
        gt = root / "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt"
        gt.write_text(gt.read_text().replace("3\n", "1001\n", 1))
    elif kind == "sources_disagree":
        write_solution(root)
        write_devkit(root, VAL_LABELS[:-1] + [WNIDS[0]])
    elif kind == "meta_not_devkit":
        data = write_devkit(root)
        scipy.io.savemat(data / "meta.mat", {"classes": np.arange(3)})
    elif kind == "wnid_not_a_class":
        write_solution(root, VAL_LABELS[:-1] + ["n01491361"])
    elif kind == "train_name_vs_folder":
        write_solution(root)
        (root / "train" / WNIDS[0] / f"{WNIDS[0]}_100.JPEG").rename(root / "train" / WNIDS[0] / f"{WNIDS[1]}_7.JPEG")


IMAGENET_BREAKS = {
    "listed_missing": r"1 listed file\(s\) missing, 0 image\(s\) it does not list",
    "unlisted": r"0 listed file\(s\) missing, 1 image\(s\) it does not list",
    "csv_bad_wnid": "LOC_val_solution.csv:\\d+: ILSVRC2012_val_00000003,tench",
    "csv_header": "header must be 'ImageId,PredictionString'",
    "devkit_id_out_of_range": "ILSVRC2012_validation_ground_truth.txt:3: 1001",
    "sources_disagree": "disagree on 1 image",
    "meta_not_devkit": "meta.mat is not the devkit's meta.mat",
    "wnid_not_a_class": r"1 wnid\(s\) out of range",
    "train_name_vs_folder": "n01440764/n01443537_7.JPEG",
}


@pytest.mark.parametrize("kind", IMAGENET_BREAKS)
def test_imagenet_label_file_problems(tmp_path, kind):
    break_imagenet(kind, tmp_path / "in")
    split = "train" if kind == "train_name_vs_folder" else "val"
    with pytest.raises(LayoutError, match=IMAGENET_BREAKS[kind]):
        run_convert("imagenet", tmp_path / "in", tmp_path / "out", f"split={split}")
    assert not (tmp_path / "out" / "manifest.json").exists()


def replace_line(path: Path, number: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[number - 1] = text
    write_lines(path, lines)


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


# -- published counts -----------------------------------------------------------------------

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


# -- the command ----------------------------------------------------------------------------

@pytest.mark.timeout(420)
@pytest.mark.slow
def test_cli_converts_verifies_and_resumes(tmp_path):
    cub_tree(tmp_path / "cub")
    out = tmp_path / "out"
    args = ["data", "convert", "cub", str(tmp_path / "cub"), str(out), "--split", "test", "shards.samples=1",
            "workers=1"]
    done = run_cli(*args)
    assert done.returncode == 0, done.stderr
    assert "3 samples in 3 shard(s), 3 labels" in done.stdout
    assert "cub test: partial, 3 of 5,794 images, 3 of 200 classes" in done.stdout
    assert sorted(p.name for p in out.glob("*.tar")) == [f"test-{i:06d}.tar" for i in range(3)]
    first = (out / "manifest.json").read_text()
    again = run_cli(*args)
    assert again.returncode == 0 and "resumed: 3 finished shard(s) kept" in again.stderr
    assert (out / "manifest.json").read_text() == first
    checked = run_cli("data", "verify", str(out), "--workers", "1", "--quiet")
    assert checked.returncode == 0, checked.stderr


@pytest.mark.slow
@pytest.mark.parametrize("args,message", [
    (["cub", "{root}", "{out}", "--split", "val"], "config key 'split' = 'val': cub has train and test"),
    (["cub", "{root}", "{out}", "workers=-1"], "config key 'workers' = -1 is out of range"),
    (["cub", "{root}/nowhere", "{out}"], "dataset root not found"),
    (["places", "{root}", "{out}"], "is not a Places365-Standard root: categories_places365.txt"),
    (["cub", "{root}", "{root}"], "'output' must not be the dataset root"),
])
def test_cli_bad_input_is_one_line(tmp_path, args, message):
    cub_tree(tmp_path / "cub")
    done = run_cli("data", "convert", *(a.format(root=tmp_path / "cub", out=tmp_path / "out") for a in args))
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr


@pytest.mark.slow
def test_cli_label_problem_quotes_the_lines(tmp_path):
    cub_tree(tmp_path / "cub")
    replace_line(tmp_path / "cub" / "image_class_labels.txt", 4, "4 9")
    done = run_cli("data", "convert", "cub", str(tmp_path / "cub"), str(tmp_path / "out"))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.splitlines()[:2] == [
        "wsl: error: image_class_labels.txt: 1 class id(s) out of range 1..3:",
        "  image_class_labels.txt:4: 4 9"]


def test_reused_output_of_another_split_is_refused(tmp_path):
    cub_tree(tmp_path / "cub")
    run_convert("cub", tmp_path / "cub", tmp_path / "out")
    with pytest.raises(ValueError, match="holds shards of a different build"):
        run_convert("cub", tmp_path / "cub", tmp_path / "out", "split=test")


def test_parts_merge_into_the_single_run(tmp_path):
    imagenet_train(tmp_path / "in")
    whole = run_convert("imagenet", tmp_path / "in", tmp_path / "whole")
    for i in range(2):
        run_convert("imagenet", tmp_path / "in", tmp_path / "parts", f"part={i}/2")
    merged = merge(str(tmp_path / "parts"))
    assert merged["shards"] == whole["shards"] and merged["source"] == whole["source"]
    assert_verifies(tmp_path / "parts")
