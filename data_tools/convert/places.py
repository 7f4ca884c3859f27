"""Places365-Standard as distributed: categories_places365.txt (`/a/airfield 0`),
places365_train_standard.txt (`/a/airfield/00000001.jpg 0`) and places365_val.txt
(`Places365_val_00000001.jpg 165`), images under data_256_standard/ or data_large_standard/
(torchvision's names; the archives unpack to data_256/ and data_large/) and val_256/ or
val_large/. Categories nest up to three levels (`/b/bus_station/indoor`).

Label index = the category file's index.
"""
from __future__ import annotations

from pathlib import Path

from data_tools.convert.listing import (Item, LayoutError, Listing, image_files, match_disk, problem, quote,
                                        read_rows, require_files, unique)

PUBLISHED = {"train": (1_803_460, 365), "val": (36_500, 365)}
CATEGORIES = "categories_places365.txt"
LISTS = {"train": "places365_train_standard.txt", "val": "places365_val.txt"}
IMAGE_DIRS = {"train": ("data_256_standard", "data_large_standard", "data_256", "data_large"),
              "val": ("val_256", "val_large")}


def read_categories(path: Path) -> list[str]:
    rows = read_rows(path, (str, int), "/l/CATEGORY INDEX")
    unique(rows, path, "category")
    by_index = unique(rows, path, "index", column=1)
    if sorted(by_index) != list(range(len(by_index))):
        wrong = [number for index, (number, _) in by_index.items() if not 0 <= index < len(by_index)]
        raise problem(f"{path}: indices must be 0..{len(by_index) - 1} without gaps:", quote(path, wrong))
    bad = [number for number, (name, _) in rows if not name.startswith("/")]
    if bad:
        raise problem(f"{path}: category names start with '/' (as in /a/airfield):", quote(path, bad), len(bad))
    return [by_index[i][1][0] for i in range(len(by_index))]


def image_dir(root: Path, split: str, chosen: str | None) -> Path:
    if chosen:
        if Path(chosen).is_absolute() or ".." in Path(chosen).parts or not (root / chosen).is_dir():
            raise LayoutError(f"image_root={chosen}: {root / chosen} is not a folder under the dataset root")
        return root / chosen
    found = [name for name in IMAGE_DIRS[split] if (root / name).is_dir()]
    if not found:
        raise LayoutError(f"{root}: no Places365 {split} images (looked for {', '.join(IMAGE_DIRS[split])})")
    if len(found) > 1:
        raise LayoutError(f"{root} holds {' and '.join(found)}: choose one with image_root=NAME")
    return root / found[0]


def read(root: Path, cfg) -> Listing:
    require_files(root, (CATEGORIES, LISTS[cfg.split]), "Places365-Standard")
    classes = read_categories(root / CATEGORIES)
    list_path = root / LISTS[cfg.split]
    listed = unique(read_rows(list_path, (str, int), "PATH INDEX"), list_path, "image")

    out_of_range = [number for number, (_, label) in listed.values() if not 0 <= label < len(classes)]
    if out_of_range:
        raise problem(f"{list_path}: {len(out_of_range)} index(es) outside 0..{len(classes) - 1}:",
                      quote(list_path, out_of_range), len(out_of_range))
    if cfg.split == "train":
        # A train path starts with its category: the two label sources must agree.
        disagree = [number for path, (number, (_, label)) in listed.items() if path.rsplit("/", 1)[0] != classes[label]]
        if disagree:
            raise problem(f"{list_path}: {len(disagree)} image(s) whose folder is not the category of their index:",
                          quote(list_path, disagree), len(disagree))

    images = image_dir(root, cfg.split, cfg.image_root)
    relative = [path.lstrip("/") for path in listed]
    match_disk(relative, image_files(images, cfg.progress), str(list_path), images)
    prefix = images.relative_to(root).as_posix()
    items = [Item(f"{prefix}/{path}", classes[label]) for path, (_, (_, label)) in zip(relative, listed.values())]
    lemmas = {name: name.split("/", 2)[-1] for name in classes}
    names = (lambda: (f"Places365_val_{i:08d}.jpg" for i in range(1, 36_501))) if cfg.split == "val" else None
    return Listing("places", cfg.split, root, classes, lemmas, items, PUBLISHED[cfg.split], names)
