"""data_tools/convert/imagenet.py: tiny ImageNet trees in each distributed layout, and label
files that disagree with the disk."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io
from helpers import (
    VAL_LABELS,
    WNIDS,
    assert_verifies,
    imagenet_flat_val,
    imagenet_train,
    labels_by_path,
    run_convert,
    samples,
    save_jpeg,
    write_lines,
    write_solution,
)

from data_tools.convert.listing import LayoutError
from data_tools.labels import vocab

LEMMAS = ["tench", "goldfish", "great_white_shark"]


# The devkit numbers classes in its own order, not sorted-wnid order; 1001 is a non-leaf synset.
DEVKIT_IDS = {1: "n01484850", 2: "n01440764", 3: "n01443537", 1001: "n00001740"}


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
