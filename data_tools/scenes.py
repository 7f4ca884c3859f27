"""A generated hashtag corpus with learnable structure, and a transfer task, for the demo.

Every image is drawn from latent concepts: one background scene and one to three objects,
each object a shape of its own with a random colour, texture, rotation, scale and place,
over clutter, the later objects occluding the earlier. Concepts are Zipf-distributed, as
hashtags are. The hashtags are derived from the concepts with Instagram's noise: WordNet
synonyms (#brownbear / #ursusarctos), plurals and case, missing tags, popular tags
unrelated to the pixels (#love, #instagood) and tags WordNet does not know.

The target task stands in for CUB or Places: its classes are *pairs* of objects, which no
hashtag names, so only features that tell the shapes apart transfer. Colour, texture and
background are nuisances there, which is what a randomly initialised trunk mostly sees.
A few target test images are planted, transformed, in the hashtag corpus as leaks for the
near-duplicate filter; a held-out hashtag split measures tag mAP on unseen images.

    root/hashtags/tags.jsonl      training images: {"path", "tags", "concepts"} per line
    root/heldout/tags.jsonl       held-out hashtag images, same format
    root/target/{train,test}/CLASS/*.jpg   single-label ImageFolder trees
    root/leaks.json               planted copies: corpus path, target test path, transform

Everything follows from the seed; nothing is downloaded.
"""
from __future__ import annotations

import io
import itertools
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageOps
from tqdm import tqdm

from data_tools.fields import bounded, check_ranges


@dataclass(frozen=True)
class Concept:
    name: str                 # also the WordNet lemma its tags canonicalise to
    tags: tuple[str, ...]     # spellings seen on Instagram; all map to one synset


# Objects, most frequent first. Each has its own shape (see SHAPES).
OBJECTS = (
    Concept("dog", ("#dog", "#dogs", "#Dog", "#domesticdog")),
    Concept("car", ("#car", "#cars", "#automobile", "#Auto")),
    Concept("cat", ("#cat", "#cats", "#Cat")),
    Concept("brown_bear", ("#brownbear", "#ursusarctos", "#BrownBear", "#brownbears")),
    Concept("airplane", ("#airplane", "#aeroplane", "#plane", "#planes")),
    Concept("sofa", ("#sofa", "#couch", "#couches")),
    Concept("boat", ("#boat", "#boats")),
    Concept("bicycle", ("#bicycle", "#bicycles", "#Bicycle")),
    Concept("fish", ("#fish", "#fishes")),
    Concept("umbrella", ("#umbrella", "#umbrellas")),
    Concept("chair", ("#chair", "#chairs")),
    Concept("butterfly", ("#butterfly", "#butterflies", "#Butterfly")),
)
SCENES = (
    Concept("beach", ("#beach", "#beaches")),
    Concept("sunset", ("#sunset", "#sundown", "#sunsets")),
    Concept("snow", ("#snow", "#Snow")),
    Concept("forest", ("#forest", "#woods", "#forests")),
    Concept("grass", ("#grass",)),
    Concept("sky", ("#sky", "#skies")),
)
# Popular tags that say nothing about the pixels: some WordNet knows (they become noisy
# labels), some it does not (the build drops and counts them).
POPULAR = ("#love", "#art", "#fun", "#summer", "#nature", "#instagood", "#photooftheday",
           "#nofilter", "#tbt", "#picoftheday", "#instadaily")
# The target task's objects: its classes are the pairs of these (10 classes).
TARGET_OBJECTS = ("dog", "cat", "brown_bear", "sofa", "bicycle")


@dataclass
class SceneConfig:
    train: int = bounded(6000, lo=1)              # hashtag images for pretraining (leaks come on top)
    heldout: int = bounded(600, lo=1)             # hashtag images never in the training shards
    target_train: int = bounded(40, lo=1)         # target images per class
    target_test: int = bounded(30, lo=1)
    leaks: int = bounded(6, lo=0)                 # target test images planted, transformed, in the corpus
    size: int = bounded(40, lo=32, hi=1024)       # side of the square images
    max_objects: int = bounded(3, lo=1, hi=3)     # objects per hashtag image: 1-3 drawn 6:3:1, cut here
    scale: float = bounded(0.31, lo=0.1, hi=0.5)  # mean object radius / image side (±0.07)
    clutter: int = bounded(2, lo=0, hi=10)        # most untagged marks per image
    textured: float = bounded(0.5, lo=0, hi=1)    # share of objects with stripes, dots or checks
    own_pattern: float = bounded(0.0, lo=0, hi=1) # share of objects in their concept's two-colour pattern
    zipf: float = bounded(1.0, lo=0)              # concept frequency ∝ 1 / rank**zipf
    tag_keep: float = bounded(0.8, lo=0, hi=1)    # chance that a present object is tagged at all
    scene_tag: float = bounded(0.6, lo=0, hi=1)   # chance that the background is tagged
    popular: float = bounded(0.5, lo=0)           # mean number of unrelated popular tags per image
    seed: int = 0

    def check(self) -> None:
        check_ranges(self)
        if self.leaks > len(target_classes()) * self.target_test:
            raise ValueError(f"leaks={self.leaks} exceeds the {len(target_classes()) * self.target_test} "
                             "target test images")


@dataclass
class Corpus:
    root: Path
    train: Path                  # tags.jsonl of the training images
    heldout: Path                # tags.jsonl of the held-out images
    target_train: Path           # ImageFolder roots
    target_test: Path
    leaks: list[dict] = field(default_factory=list)


def zipf_weights(n: int, exponent: float) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1) ** exponent
    return w / w.sum()


# --- drawing -------------------------------------------------------------------------

def _polygon(points, angle: float) -> np.ndarray:
    pts = np.asarray(points, dtype=np.float64)
    c, s = math.cos(angle), math.sin(angle)
    return pts @ np.array([[c, s], [-s, c]])


def _star(n: int, inner: float) -> list:
    return [(math.cos(math.pi * k / n) * (1 if k % 2 == 0 else inner),
             math.sin(math.pi * k / n) * (1 if k % 2 == 0 else inner)) for k in range(2 * n)]


def _arc(start: float, stop: float, radius: float = 1.0, steps: int = 16) -> list:
    return [(radius * math.cos(t), radius * math.sin(t)) for t in np.linspace(start, stop, steps)]


# Each object's outline in unit coordinates (about [-1, 1]); a list of polygons is their union,
# a ("hole", polygon) entry is cut out.
SHAPES = {
    "dog": [[(-1, 0.8), (1, 0.8), (0, -1)]],                                  # triangle
    "car": [[(-1, -0.45), (1, -0.45), (1, 0.45), (-1, 0.45)]],               # wide rectangle
    "cat": [_star(5, 0.45)],                                                  # five-point star
    "brown_bear": [_arc(0, 2 * math.pi)],                                     # disc
    "airplane": [[(-1, -0.25), (1, -0.25), (1, 0.25), (-1, 0.25)],            # cross
                 [(-0.25, -1), (0.25, -1), (0.25, 1), (-0.25, 1)]],
    "sofa": [_arc(0, 2 * math.pi), ("hole", _arc(0, 2 * math.pi, 0.55))],     # ring
    "boat": [_arc(0, math.pi) + [(-1, 0)]],                                   # half disc
    "bicycle": [[(x + dx, y) for x, y in _arc(0, 2 * math.pi, 0.48)] for dx in (-0.5, 0.5)],  # two discs
    "fish": [[(-1, 0), (0, -0.9), (1, 0), (0, 0.9)]],                         # diamond
    "umbrella": [_star(3, 0.3)],                                              # three-point star
    "chair": [[(-1, -1), (-0.35, -1), (-0.35, 0.35), (1, 0.35), (1, 1), (-1, 1)]],  # L
    "butterfly": [[(-1, -1), (0, 0), (-1, 1)], [(1, -1), (0, 0), (1, 1)]],    # bow tie
}


def shape_mask(name: str, size: int, cx: float, cy: float, radius: float, angle: float) -> np.ndarray:
    """Boolean size×size mask of one object, drawn 2× supersampled for smooth edges."""
    scale = 2
    mask = Image.new("L", (size * scale, size * scale), 0)
    draw = ImageDraw.Draw(mask)
    for part in SHAPES[name]:
        fill, points = (0, part[1]) if part[0] == "hole" else (255, part)
        pts = _polygon(points, angle) * radius + (cx, cy)
        draw.polygon([tuple(p) for p in (pts * scale)], fill=fill)
    return np.asarray(mask.resize((size, size), Image.BILINEAR)) > 127


def texture(rng: np.random.Generator, size: int, textured: float) -> np.ndarray:
    """A size×size brightness factor: plain, or (a `textured` share) stripes, dots or checks."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    kind = rng.integers(1, 4)
    period = rng.uniform(4, 10)
    if rng.random() >= textured:
        return np.ones((size, size), np.float32)
    if kind == 1:
        t = rng.uniform(0, math.pi)
        return 0.75 + 0.25 * np.sign(np.sin((x * math.cos(t) + y * math.sin(t)) * 2 * math.pi / period))
    if kind == 2:
        return np.where((np.sin(x * 2 * math.pi / period) * np.sin(y * 2 * math.pi / period)) > 0.5, 0.6, 1.0)
    return 0.8 + 0.2 * np.sign(np.sin(x * math.pi / period) * np.sin(y * math.pi / period))


def own_pattern(name: str, size: int) -> np.ndarray:
    """The concept's own binary pattern (stripes at its angle, or checks), whatever its colours:
    identity a CNN learns in a few hundred steps, which colour statistics do not give away."""
    index = [c.name for c in OBJECTS].index(name)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    period, step = size / 5, index // 2
    if index % 2:  # checks, turned in 15° steps (a quarter turn maps them onto themselves)
        t = step * math.pi / 12
        u, v = x * math.cos(t) + y * math.sin(t), -x * math.sin(t) + y * math.cos(t)
        return (np.sin(u * 2 * math.pi / period) * np.sin(v * 2 * math.pi / period)) > 0
    t = step * math.pi / 6  # stripes, turned in 30° steps
    return np.sin((x * math.cos(t) + y * math.sin(t)) * 2 * math.pi / period) > 0


def random_colour(rng: np.random.Generator) -> np.ndarray:
    hue, sat, val = rng.uniform(0, 1), rng.uniform(0.5, 1), rng.uniform(0.45, 1)
    rgb = np.clip(np.abs(((hue * 6 + np.array([0, 4, 2])) % 6) - 3) - 1, 0, 1)
    return 255 * val * (1 - sat + sat * rgb)


def background(rng: np.random.Generator, scene: str, size: int) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    jitter = rng.uniform(-20, 20, size=3)

    def mix(top, bottom, t):
        return np.asarray(top, np.float32) * (1 - t[..., None]) + np.asarray(bottom, np.float32) * t[..., None]

    if scene == "beach":
        horizon = rng.uniform(0.3, 0.6)
        img = np.where((y < horizon)[..., None], mix((90, 150, 230), (160, 200, 240), y), (225, 200, 140))
    elif scene == "sunset":
        img = mix((120, 60, 140), (250, 150, 50), y)
    elif scene == "snow":
        img = mix((235, 240, 250), (200, 205, 215), y) + rng.normal(0, 6, (size, size, 1))
    elif scene == "forest":
        trunks = np.sin(x * rng.uniform(20, 40) + rng.uniform(0, 6)) > 0.6
        img = np.where(trunks[..., None], (70, 50, 30), (30, 90, 40)) + rng.normal(0, 10, (size, size, 1))
    elif scene == "grass":
        img = mix((110, 170, 70), (60, 130, 40), y) + rng.normal(0, 18, (size, size, 1))
    else:  # sky, with a few clouds
        img = mix((70, 120, 210), (150, 190, 240), y)
        for _ in range(rng.integers(0, 3)):
            cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 0.7), rng.uniform(0.08, 0.2)
            img[(x - cx) ** 2 + ((y - cy) * 2) ** 2 < r * r] = (245, 245, 250)
    return img.astype(np.float32) + jitter


def clutter(rng: np.random.Generator, img: np.ndarray, most: int) -> None:
    """Small blobs and thin lines in random colours: no concept, no tag."""
    size = img.shape[0]
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    for _ in range(rng.integers(0, most + 1)):
        x0, y0 = rng.uniform(0, size, 2)
        if rng.random() < 0.5:
            x1, y1 = rng.uniform(0, size, 2)
            draw.line([(x0, y0), (x1, y1)], fill=255, width=1)
        else:
            r = rng.uniform(1, size / 14)
            draw.ellipse([x0 - r, y0 - r, x0 + r, y0 + r], fill=255)
        mask = np.asarray(canvas) > 0
        img[mask] = random_colour(rng)
        draw.rectangle([0, 0, size, size], fill=0)


def render(rng: np.random.Generator, scene: str, objects: list[str], cfg: SceneConfig) -> Image.Image:
    size = cfg.size
    img = background(rng, scene, size)
    clutter(rng, img, cfg.clutter)
    for name in objects:
        radius = size * rng.uniform(cfg.scale - 0.07, cfg.scale + 0.07)
        cx, cy = rng.uniform(radius * 0.6, size - radius * 0.6, 2)
        mask = shape_mask(name, size, cx, cy, radius, rng.uniform(0, 2 * math.pi))
        if rng.random() < cfg.own_pattern:
            pattern = own_pattern(name, size)[..., None]
            paint = np.where(pattern, random_colour(rng), random_colour(rng))
        else:
            paint = random_colour(rng) * texture(rng, size, cfg.textured)[..., None]
        img[mask] = paint[mask]
    img += rng.normal(0, 5, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


# --- tags ----------------------------------------------------------------------------

def hashtags(rng: np.random.Generator, scene: str | None, objects: list[str], cfg: SceneConfig) -> list[str]:
    """The tags a user would write: some concepts left out, any spelling, popular noise.
    A repost (scene None) has a background that is none of our scenes."""
    tags = []
    for concept in (c for c in OBJECTS if c.name in objects):
        if rng.random() < cfg.tag_keep:
            tags.append(str(rng.choice(concept.tags)))
    if scene is not None and rng.random() < cfg.scene_tag:
        tags.append(str(rng.choice(next(c for c in SCENES if c.name == scene).tags)))
    tags += [str(t) for t in rng.choice(POPULAR, size=min(rng.poisson(cfg.popular), len(POPULAR)), replace=False)]
    rng.shuffle(tags)
    return tags


def draw_concepts(rng: np.random.Generator, cfg: SceneConfig) -> tuple[str, list[str]]:
    """A Zipf-drawn scene and one to three distinct Zipf-drawn objects."""
    scene = SCENES[rng.choice(len(SCENES), p=zipf_weights(len(SCENES), cfg.zipf))].name
    weights = np.array([0.6, 0.3, 0.1])[:cfg.max_objects]
    count = int(rng.choice(np.arange(1, cfg.max_objects + 1), p=weights / weights.sum()))
    picks = rng.choice(len(OBJECTS), size=count, replace=False, p=zipf_weights(len(OBJECTS), cfg.zipf))
    return scene, [OBJECTS[i].name for i in picks]


# --- writers -------------------------------------------------------------------------

def save_jpeg(image: Image.Image, path: Path, quality: int = 90) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, quality=quality)


def write_hashtag_split(root: Path, folder: str, count: int, rng: np.random.Generator, cfg: SceneConfig,
                        planted: dict[int, tuple[Image.Image, list[str]]], progress: bool) -> Path:
    """`count` generated images (plus the planted ones at their positions) and tags.jsonl."""
    out = root / folder
    (out / "imgs").mkdir(parents=True, exist_ok=True)
    manifest = out / "tags.jsonl"
    with open(manifest, "w") as f:
        for i in tqdm(range(count + len(planted)), desc=f"generate {folder}", unit="img",
                      disable=not progress, mininterval=1):
            if i in planted:
                image, objects = planted[i]
                scene = None
            else:
                scene, objects = draw_concepts(rng, cfg)
                image = render(rng, scene, objects, cfg)
            save_jpeg(image, out / "imgs" / f"{i:06d}.jpg")
            tags = hashtags(rng, scene, objects, cfg)
            f.write(json.dumps({"path": f"imgs/{i:06d}.jpg", "tags": tags,
                                "concepts": {"scene": scene, "objects": sorted(objects)}}) + "\n")
    return manifest


def target_classes() -> list[tuple[str, str]]:
    return list(itertools.combinations(TARGET_OBJECTS, 2))


def class_name(pair: tuple[str, str]) -> str:
    return "+".join(pair)


def write_target(root: Path, rng: np.random.Generator, cfg: SceneConfig) -> dict[str, list[Path]]:
    """Pair classes on random scenes with one unrelated object as a distractor at times."""
    split_paths: dict[str, list[Path]] = {}
    others = [c.name for c in OBJECTS if c.name not in TARGET_OBJECTS]
    for split, per_class in (("train", cfg.target_train), ("test", cfg.target_test)):
        split_paths[split] = []
        for pair in target_classes():
            for i in range(per_class):
                objects = list(pair) + ([str(rng.choice(others))] if rng.random() < 0.3 else [])
                rng.shuffle(objects)
                scene = SCENES[rng.integers(len(SCENES))].name
                path = root / "target" / split / class_name(pair) / f"{i:04d}.jpg"
                save_jpeg(render(rng, scene, objects, cfg), path)
                split_paths[split].append(path)
    return split_paths


def transformed_copy(rng: np.random.Generator, path: Path) -> tuple[Image.Image, dict]:
    """A re-post of an image: cropped, resized, maybe mirrored, re-encoded at low quality."""
    image = Image.open(path).convert("RGB")
    w, h = image.size
    keep = rng.uniform(0.85, 0.95)
    cw, ch = int(w * keep), int(h * keep)
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    side = int(rng.integers(int(w * 0.8), int(w * 1.5)))
    flip = bool(rng.random() < 0.5)
    quality = int(rng.integers(55, 80))
    image = image.crop((x0, y0, x0 + cw, y0 + ch)).resize((side, side), Image.BICUBIC)
    if flip:
        image = ImageOps.mirror(image)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    transform = {"crop": [x0, y0, x0 + cw, y0 + ch], "size": side, "flip": flip, "quality": quality}
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"), transform


def generate(root: str | Path, cfg: SceneConfig = SceneConfig(), progress: bool = True) -> Corpus:
    """Write the whole demo corpus under `root` (see the module doc); same seed, same bytes."""
    cfg.check()
    root = Path(root)
    rng = np.random.default_rng(cfg.seed)
    target = write_target(root, rng, cfg)
    leaked = rng.choice(len(target["test"]), size=cfg.leaks, replace=False)
    positions = rng.choice(cfg.train + cfg.leaks, size=cfg.leaks, replace=False)
    planted, leaks = {}, []
    for index, position in zip(leaked, positions):
        source = target["test"][index]
        image, transform = transformed_copy(rng, source)
        planted[int(position)] = (image, source.parent.name.split("+"))
        leaks.append({"path": str(Path("hashtags") / "imgs" / f"{int(position):06d}.jpg"),
                      "target": str(source.relative_to(root)), "transform": transform})
    train = write_hashtag_split(root, "hashtags", cfg.train, rng, cfg, planted, progress)
    heldout = write_hashtag_split(root, "heldout", cfg.heldout, rng, cfg, {}, progress)
    leaks.sort(key=lambda leak: leak["path"])
    (root / "leaks.json").write_text(json.dumps({"config": asdict(cfg), "leaks": leaks}, indent=1) + "\n")
    return Corpus(root, train, heldout, root / "target" / "train", root / "target" / "test", leaks)
