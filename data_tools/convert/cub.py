"""CUB-200-2011 as distributed: CUB_200_2011/{images.txt, image_class_labels.txt,
train_test_split.txt, classes.txt, bounding_boxes.txt, images/CLASS/*.jpg}, ids 1-based.

Label index = class id - 1; every sample carries its `bbox` [x, y, w, h] in the pixels of
its image in the shard (the build scales and turns it with the image: images.map_box).
"""
from __future__ import annotations

from pathlib import Path

from data_tools.convert.listing import (Item, LayoutError, Listing, image_files, match_disk, problem, quote,
                                        read_rows, require_files, unique)

PUBLISHED = {"train": (5_994, 200), "test": (5_794, 200)}
FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt", "bounding_boxes.txt")


def find_root(root: Path) -> Path:
    """ROOT itself, or the CUB_200_2011 folder the archive unpacks to inside it."""
    inner = root / "CUB_200_2011"
    return inner if not (root / "images.txt").is_file() and (inner / "images.txt").is_file() else root


def read_classes(path: Path) -> list[str]:
    rows = unique(read_rows(path, (int, str), "CLASS_ID NAME"), path, "class id")
    ids = sorted(rows)
    if ids != list(range(1, len(ids) + 1)):
        wrong = [number for i, (number, _) in rows.items() if not 1 <= i <= len(ids)]
        raise problem(f"{path}: class ids must be 1..{len(ids)} (1-based, no gaps):", quote(path, wrong))
    return [rows[i][1][1] for i in ids]


def per_image(path: Path, columns: tuple, form: str, image_ids: dict) -> dict:
    """IMAGE_ID -> (line number, fields); each id of images.txt exactly once, no other id."""
    rows = unique(read_rows(path, columns, form), path, "image id")
    unknown = [number for key, (number, _) in rows.items() if key not in image_ids]
    if unknown:
        raise problem(f"{path}: {len(unknown)} image id(s) out of range (not in images.txt):",
                      quote(path, unknown), len(unknown))
    absent = [image_ids[key][0] for key in image_ids if key not in rows]
    if absent:
        raise problem(f"{path} has no line for {len(absent)} image(s) of images.txt:",
                      quote(path.with_name("images.txt"), absent), len(absent))
    return rows


def read(root: Path, cfg) -> Listing:
    root = find_root(root)
    require_files(root, FILES, "CUB-200-2011")
    classes = read_classes(root / "classes.txt")
    images = unique(read_rows(root / "images.txt", (int, str), "IMAGE_ID PATH"), root / "images.txt", "image id")
    labels = per_image(root / "image_class_labels.txt", (int, int), "IMAGE_ID CLASS_ID", images)
    is_train = per_image(root / "train_test_split.txt", (int, int), "IMAGE_ID 0|1", images)
    boxes = per_image(root / "bounding_boxes.txt", (int, float, float, float, float), "IMAGE_ID X Y W H", images)

    path_of = {i: fields[1] for i, (_, fields) in images.items()}
    bad_class = [number for number, (_, cls) in labels.values() if not 1 <= cls <= len(classes)]
    if bad_class:
        raise problem(f"image_class_labels.txt: {len(bad_class)} class id(s) out of range 1..{len(classes)}:",
                      quote(root / "image_class_labels.txt", bad_class), len(bad_class))
    class_of = {i: classes[cls - 1] for i, (_, (_, cls)) in labels.items()}
    # The folder an image lies in names its class too: the two must agree.
    disagree = [labels[i][0] for i in images if path_of[i].split("/")[0] != class_of[i]]
    if disagree:
        raise problem(f"image_class_labels.txt disagrees with the class folders of images.txt for "
                      f"{len(disagree)} image(s):", quote(root / "image_class_labels.txt", disagree), len(disagree))
    bad_split = [number for number, (_, flag) in is_train.values() if flag not in (0, 1)]
    if bad_split:
        raise problem("train_test_split.txt: values must be 1 (train) or 0 (test):",
                      quote(root / "train_test_split.txt", bad_split), len(bad_split))
    bad_box = [number for number, (_, _, _, w, h) in boxes.values() if w <= 0 or h <= 0]
    if bad_box:
        raise problem("bounding_boxes.txt: boxes need a positive width and height:",
                      quote(root / "bounding_boxes.txt", bad_box), len(bad_box))

    match_disk(list(path_of.values()), image_files(root / "images", cfg.progress),
               str(root / "images.txt"), root / "images")
    want = 1 if cfg.split == "train" else 0
    items = [Item(f"images/{path_of[i]}", class_of[i], {"bbox": list(boxes[i][1][1:])})
             for i in sorted(images) if is_train[i][1][1] == want]
    if not items:
        raise LayoutError(f"{root}: train_test_split.txt puts no image in the {cfg.split} split")
    lemmas = {name: name.split(".", 1)[-1].replace("_", " ") for name in classes}
    return Listing("cub", cfg.split, root, classes, lemmas, items, PUBLISHED[cfg.split])
