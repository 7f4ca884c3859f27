"""ImageNet ILSVRC2012 as distributed.

Images: ROOT/{train,val}/ or ROOT/ILSVRC/Data/CLS-LOC/{train,val}/ (the Kaggle layout).
train/<wnid>/<wnid>_<n>.JPEG; val either in class folders or flat ILSVRC2012_val_%08d.JPEG,
labelled by ROOT/LOC_val_solution.csv (first wnid of PredictionString) and/or the devkit
(ROOT/ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt: one ILSVRC2012_ID
per line in file order, mapped to wnids by data/meta.mat). Every label source present is
read, and they must agree with each other and with the disk.

Label index = sorted wnid (torchvision's and timm's order, so their heads line up). The
class list is LOC_synset_mapping.txt or meta.mat's leaf synsets when present, else the
train folders, else the split's own labels.
"""
from __future__ import annotations

import csv
import re
from pathlib import Path

from data_tools.convert.listing import (
    Item,
    LayoutError,
    Listing,
    image_files,
    match_disk,
    problem,
    quote,
    read_rows,
    unique,
)
from data_tools.labels.wordnet import WordNet

PUBLISHED = {"train": (1_281_167, 1000), "val": (50_000, 1000)}
WNID = re.compile(r"n\d{8}")
KAGGLE = Path("ILSVRC/Data/CLS-LOC")
MAPPING = "LOC_synset_mapping.txt"
SOLUTION = "LOC_val_solution.csv"
DEVKITS = ("ILSVRC2012_devkit_t12", "devkit", ".")
META = Path("data/meta.mat")
GROUND_TRUTH = Path("data/ILSVRC2012_validation_ground_truth.txt")
VAL_NAME = "ILSVRC2012_val_{:08d}.JPEG"


def split_dir(root: Path, split: str) -> Path | None:
    for base in (root / KAGGLE, root):
        if (base / split).is_dir():
            return base / split
    return None


def find_devkit(root: Path) -> Path | None:
    for name in DEVKITS:
        if (root / name / META).is_file() or (root / name / GROUND_TRUTH).is_file():
            return root / name
    return None


def read_mapping(path: Path) -> list[str]:
    rows = unique(read_rows(path, (str, str), "WNID WORDS"), path, "wnid")
    bad = [number for wnid, (number, _) in rows.items() if not WNID.fullmatch(wnid)]
    if bad:
        raise problem(f"{path}: {len(bad)} line(s) not starting with a wnid (n + 8 digits):", quote(path, bad), len(bad))
    return list(rows)


def read_meta(path: Path) -> dict[int, str]:
    """ILSVRC2012_ID -> wnid of the 1,000 leaf synsets (num_children == 0), as torchvision reads it."""
    import numpy as np
    from scipy.io import loadmat  # only the devkit layout needs scipy's start-up cost

    try:
        synsets = np.atleast_1d(loadmat(str(path), squeeze_me=True)["synsets"])
        fields = zip(synsets["ILSVRC2012_ID"], synsets["WNID"], synsets["num_children"])
        ids = {int(i): str(wnid) for i, wnid, children in fields if int(children) == 0}
    except (ValueError, KeyError, IndexError, TypeError, OSError, NotImplementedError) as err:
        raise LayoutError(f"{path} is not the devkit's meta.mat (a 'synsets' struct with ILSVRC2012_ID, "
                          f"WNID, num_children): {err}") from None
    bad = [f"ILSVRC2012_ID {i}: {wnid!r}" for i, wnid in ids.items() if not WNID.fullmatch(wnid)]
    if bad or not ids:
        raise problem(f"{path}: leaf synsets without a valid wnid (or none at all):", bad or ["(no leaf synset)"])
    return ids


def read_solution(path: Path) -> dict[str, str]:
    """File name -> wnid from LOC_val_solution.csv; rows may come in any order."""
    labels, bad = {}, []
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = csv.reader(f)
        header = next(rows, None)
        if header != ["ImageId", "PredictionString"]:
            raise LayoutError(f"{path}: header must be 'ImageId,PredictionString', found {','.join(header or [])!r}")
        for number, row in enumerate(rows, 2):
            words = row[1].split() if len(row) == 2 else []
            if not words or not WNID.fullmatch(words[0]) or not row[0] or row[0] + ".JPEG" in labels:
                bad.append(number)
            else:
                labels[row[0] + ".JPEG"] = words[0]
    if bad:
        raise problem(f"{path}: {len(bad)} malformed or repeated row(s), expected 'ImageId,WNID X Y X Y ...':",
                      quote(path, bad), len(bad))
    return labels


def read_ground_truth(path: Path, ids: dict[int, str] | None) -> dict[str, str]:
    """File name -> wnid: line k labels ILSVRC2012_val_0000000k.JPEG."""
    if ids is None:
        raise LayoutError(f"{path} needs the devkit's {META} beside it to map ILSVRC2012_IDs to wnids")
    rows = read_rows(path, (int,), "ILSVRC2012_ID")
    bad = [number for number, (i,) in rows if i not in ids]
    if bad:
        raise problem(f"{path}: {len(bad)} ILSVRC2012_ID(s) out of range (not a leaf synset of meta.mat, "
                      f"1..{len(ids)}):", quote(path, bad), len(bad))
    return {VAL_NAME.format(k): ids[i] for k, (_, (i,)) in enumerate(rows, 1)}


def val_labels(root: Path, devkit: Path | None, ids: dict[int, str] | None) -> tuple[str, dict] | None:
    """(label file, its labels) from every val label source present; they must agree."""
    sources = []
    if (root / SOLUTION).is_file():
        sources.append((str(root / SOLUTION), read_solution(root / SOLUTION)))
    if devkit is not None and (devkit / GROUND_TRUTH).is_file():
        sources.append((str(devkit / GROUND_TRUTH), read_ground_truth(devkit / GROUND_TRUTH, ids)))
    if len(sources) == 2:
        (name_a, a), (name_b, b) = sources
        short_a, short_b = Path(name_a).name, Path(name_b).name
        lines = [f"{name}: only in {short_a}" for name in a if name not in b] + \
                [f"{name}: only in {short_b}" for name in b if name not in a] + \
                [f"{name}: {short_a} says {a[name]}, {short_b} says {b[name]}"
                 for name in a if name in b and a[name] != b[name]]
        if lines:
            raise problem(f"{name_a} and {name_b} disagree on {len(lines)} image(s):", lines)
    return sources[0] if sources else None


def folder_items(images: Path, on_disk: set[str], split: str) -> list[tuple[str, str]]:
    """(path under images, wnid) of a class-folder tree; names must match their folder in train."""
    loose = sorted(p for p in on_disk if "/" not in p)
    if loose:
        raise problem(f"{images}: {len(loose)} image(s) outside the class folders:", loose)
    items = [(path, path.split("/", 1)[0]) for path in sorted(on_disk)]
    bad = sorted({wnid for _, wnid in items if not WNID.fullmatch(wnid)})
    if bad:
        raise problem(f"{images}: {len(bad)} class folder(s) not named by a wnid (n + 8 digits):", bad)
    if split == "train":
        # A train file is named <wnid>_<n>.JPEG: its folder and its name are two label sources.
        wrong = [path for path, wnid in items if not Path(path).name.startswith(wnid + "_")]
        if wrong:
            raise problem(f"{images}: {len(wrong)} image(s) whose name names another class than their folder:",
                          wrong)
    return items


def check_folders_against(labels: tuple[str, dict], items: list[tuple[str, str]], images: Path) -> None:
    label_file, by_name = labels
    match_disk(list(by_name), {Path(path).name for path, _ in items}, label_file, images)
    wrong = [f"{path}: {Path(label_file).name} says {by_name[Path(path).name]}" for path, wnid in items
             if by_name[Path(path).name] != wnid]
    if wrong:
        raise problem(f"{label_file} disagrees with the class folders for {len(wrong)} image(s):", wrong)


def class_list(root: Path, ids: dict[int, str] | None, own: set[str]) -> tuple[list[str], str]:
    """The classes in label order and where they came from."""
    mapping = read_mapping(root / MAPPING) if (root / MAPPING).is_file() else None
    if mapping is not None and ids is not None and set(mapping) != set(ids.values()):
        differ = sorted(set(mapping) ^ set(ids.values()))
        raise problem(f"{root / MAPPING} and the devkit's meta.mat list different classes:", differ, len(differ))
    if mapping is not None:
        return sorted(mapping), MAPPING
    if ids is not None:
        return sorted(ids.values()), str(META)
    train = split_dir(root, "train")
    if train is not None:
        return sorted(p.name for p in train.iterdir() if p.is_dir() and WNID.fullmatch(p.name)), "train folders"
    return sorted(own), "the split's own labels"


def read(root: Path, cfg) -> Listing:
    images = split_dir(root, cfg.split)
    if images is None:
        raise LayoutError(f"{root}: no ImageNet {cfg.split} images (looked for {root / cfg.split} and "
                          f"{root / KAGGLE / cfg.split})")
    devkit = find_devkit(root)
    ids = read_meta(devkit / META) if devkit is not None and (devkit / META).is_file() else None
    labels = val_labels(root, devkit, ids) if cfg.split == "val" else None
    on_disk = image_files(images, cfg.progress)
    if cfg.split == "val" and all("/" not in p for p in on_disk):
        if labels is None:
            raise LayoutError(f"{images} is flat: its labels need {root / SOLUTION} or the devkit's "
                              f"{GROUND_TRUTH} (+ {META}) under {root / DEVKITS[0]}")
        label_file, by_name = labels
        match_disk(list(by_name), on_disk, label_file, images)
        items = [(name, by_name[name]) for name in sorted(by_name)]
    else:
        items = folder_items(images, on_disk, cfg.split)
        if labels is not None:
            check_folders_against(labels, items, images)

    classes, origin = class_list(root, ids, {wnid for _, wnid in items})
    known = set(classes)
    unknown = sorted({wnid for _, wnid in items if wnid not in known})
    if unknown:
        raise problem(f"{images}: {len(unknown)} wnid(s) out of range (not among the {len(classes)} classes "
                      f"of {origin}):", unknown)
    prefix = images.relative_to(root).as_posix()
    wordnet = WordNet(cfg.wordnet_dir)
    names = (lambda: (VAL_NAME.format(i) for i in range(1, 50_001))) if cfg.split == "val" else None
    return Listing("imagenet", cfg.split, root, classes, {wnid: wordnet.lemma(wnid) for wnid in classes},
                   [Item(f"{prefix}/{path}", wnid) for path, wnid in items], PUBLISHED[cfg.split], names)
