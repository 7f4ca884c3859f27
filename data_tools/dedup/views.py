"""The images a descriptor sees: decoded small, framed borders cut, and the variants of an
evaluation image that the index holds.

The evaluation side is small (about 92k images for ImageNet val + CUB test + Places val),
so it can hold several views of each image — mirrored, centre crops, shifted crops —
and a training copy that was cropped or flipped lands near one of them, without a
descriptor that is itself invariant to crops and flips. A black (or white) frame
around a copy is cut, on both sides, where it costs one pass over a thumbnail; an image
whose own background is flat and near white or black (snow, a product shot on white) is
also described whole, since its frame-like rows may be cut to a depth its copy does not share.
"""
from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps

Image.MAX_IMAGE_PIXELS = None  # shards hold images `wsl data build` already checked

WORK_SIDE = 128           # images are reduced to about this side before anything else
CROPS = (0.9, 0.8, 0.7, 0.6)    # centre crops indexed per evaluation image (side fraction)
SHIFT = 0.05              # shifted 0.85 crops: this fraction of the side off centre
SHIFTS = [(dx, dy) for dx in (-SHIFT, 0, SHIFT) for dy in (-SHIFT, 0, SHIFT) if dx or dy]
BORDER_TOLERANCE = 12     # grey levels a frame row may vary and still count as flat
FRAME_DARK, FRAME_LIGHT = 40, 215   # a frame is near black or near white
BLEND = 2                 # rows past a frame that resizing and JPEG blended into it
FLAT_SHARE = 0.95         # share of a row's pixels at the frame's level for the row to be frame
MAX_BORDER = 0.25         # at most this fraction of a side is cut as frame, per edge


class Undecodable(Exception):
    """Image bytes that do not decode; the caller counts them."""


def decode(data: bytes, side: int = WORK_SIDE) -> Image.Image:
    """RGB image with its shorter side reduced to about `side` (JPEG: in the DCT domain)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im = Image.open(io.BytesIO(data))
            # draft() picks the largest 1/2^k DCT scale still >= the requested size: a
            # full-size decode is never needed for a 32-pixel descriptor.
            im.draft("RGB", (side, side))
            im = im.convert("RGB")
            im.load()
    except Exception as err:  # any decoder failure is a counted bad sample, never a crash
        raise Undecodable(f"{type(err).__name__}: {err}") from None
    scale = side / min(im.size)
    if scale < 1:
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.BILINEAR,
                       reducing_gap=2.0)
    return im


def cut_border(im: Image.Image, rounds: int = 8, flat_any: bool = False) -> Image.Image:
    """Remove flat frames (letterbox, black border, passe-partout) from each edge, at most
    MAX_BORDER of a side per edge. A frame around an image with a flat background of its
    own (a product shot on white) is cut in later rounds, one blended row at a time, so
    the copy ends where the original does. With `flat_any`, a flat frame of any colour
    (coloured padding) is cut too: for a query view only, beside the other framings."""
    box = frame_box(im, rounds, flat_any)
    return im if box == (0, 0, *im.size) else im.crop(box)


def frame_box(im: Image.Image, rounds: int = 8, flat_any: bool = False) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of what cut_border keeps."""
    grey = np.asarray(im.convert("L"), dtype=np.int16)
    h, w = grey.shape
    room = [int(w * MAX_BORDER), int(h * MAX_BORDER)] * 2   # left, top, right, bottom
    cut = [0, 0, 0, 0]
    for _ in range(rounds):
        part = grey[cut[1]:h - cut[3], cut[0]:w - cut[2]]
        more = [_flat_run(part.T, room[0] - cut[0], flat_any), _flat_run(part, room[1] - cut[1], flat_any),
                _flat_run(part.T[::-1], room[2] - cut[2], flat_any), _flat_run(part[::-1], room[3] - cut[3], flat_any)]
        if not any(more):
            break
        cut = [c + m for c, m in zip(cut, more)]
    return cut[0], cut[1], w - cut[2], h - cut[3]


def _flat_run(rows: np.ndarray, limit: int, flat_any: bool = False) -> int:
    """How many leading rows are frame: flat, near black or white, at the first row's
    level, plus the BLEND rows where resizing and JPEG smeared the frame into the image.
    Mid-grey flat rows (a sky, a gradient) are image, not frame: cutting them would cut
    an original and its cropped copy differently."""
    if limit < 1:
        return 0
    head = rows[:limit]
    level = np.median(head[0])
    if not flat_any and FRAME_DARK < level < FRAME_LIGHT:
        return 0
    # A share, not every pixel: the corners of a frame blend two edges.
    flat = (np.abs(head - level) <= BORDER_TOLERANCE).mean(axis=1) >= FLAT_SHARE
    run = int(limit if flat.all() else np.argmin(flat))
    return min(limit, run + BLEND) if run else 0


def crop(im: Image.Image, fraction: float, dx: float = 0.0, dy: float = 0.0) -> Image.Image:
    """A crop keeping `fraction` of each side, moved (dx, dy) side fractions off centre."""
    w, h = im.size
    cw, ch = w * fraction, h * fraction
    x0 = (w - cw) / 2 + dx * w
    y0 = (h - ch) / 2 + dy * h
    return im.crop((round(x0), round(y0), round(x0 + cw), round(y0 + ch)))


def framings(im: Image.Image) -> list[Image.Image]:
    """The image as decoded and, when cut_border found a frame, without it."""
    cut = cut_border(im)
    return [im] if cut.size == im.size else [im, cut]


def aligned_views(im: Image.Image) -> list[Image.Image]:
    """Crops of one framing, centred and moved toward each edge and corner (a re-post
    cropped off one corner lands near a corner view), and all of them mirrored."""
    views = [im] + [crop(im, f) for f in CROPS]
    views += [crop(im, 0.85, dx, dy) for dx, dy in SHIFTS]
    return views + [ImageOps.mirror(v) for v in views]


def index_views(im: Image.Image, shortlist: bool = False) -> list[Image.Image]:
    """The views of one evaluation image that go into the index; with `shortlist` (the
    shortlist of local-feature verification) shortlist_views too."""
    return [view for framing in framings(im)
            for view in aligned_views(framing) + (shortlist_views(framing) if shortlist else [])]


def query_views(im: Image.Image, partial: bool = False) -> list[Image.Image]:
    """The views of one training image searched against the index; its score is the best.
    With `partial` (the shortlist of local-feature verification), first the parts of it
    that may hold a whole evaluation image: the image cut of a flat frame of any colour,
    and tiles. The frame-cut framing stays last (--self describes an image by it)."""
    return (partial_views(im) if partial else []) + framings(im)


TILES = ((0.6, 4), (0.75, 2))   # (side fraction, positions per axis): where a pasted photo may sit
ROTATIONS = (-12, -6, 6, 12)    # degrees; the index holds each framing turned so


def partial_views(im: Image.Image) -> list[Image.Image]:
    """A training image's regions that a copy of an evaluation image may fill: a photo
    pasted into another, the photo of a screenshotted post, a photo on coloured padding.
    Tiles cover them at the training image's aspect; boxed_regions finds them at their own."""
    out = [cut_border(im, flat_any=True)] + [im.crop(box) for box in boxed_regions(im)]
    for fraction, steps in TILES:
        room = (1 - fraction) / 2
        offsets = np.linspace(-room, room, steps)
        out += [crop(im, fraction, dx, dy) for dx in offsets for dy in offsets]
    return out


EDGE_STEP = 6     # levels between neighbouring pixels, in any channel, that make an edge pixel
EDGE_RADIUS = 2    # an edge pixel's step is the largest of the lines this far either way
EDGE_LINES = 12     # candidate edge lines per axis, besides the image's own edges
BOX_SIDE = 0.3      # a box spans at least this share of the image's shorter side, both ways
BOX_SOLID = 0.45    # share of each inner side of a box that must be edge pixels
BOX_MAJOR = 0.45   # and at least this share of the image's width or of its height
BORDER_SOLID = 0.8  # what a side on the image's own edge counts as, in a box's outline
BOXES = 10         # boxes kept, the most solid outline first


def boxed_regions(im: Image.Image) -> list[tuple[int, int, int, int]]:
    """Up to BOXES rectangles (left, top, right, bottom) bounded by straight edges: a photo
    pasted into another or set in a screenshot is a box whose inner sides are a long,
    unbroken step. A side on the image's own edge needs no step (a screenshot's photo
    spans its width), but at least two sides must be inside. Boxes are ranked by the
    share of their outline that is edge, each side weighed by its length and a side on
    the image's edge counted as BORDER_SOLID: in a textured backdrop many boxes have
    every inner side solid, and the pasted photo is the one whose whole outline is."""
    g = np.asarray(im.convert("RGB"), np.int16)
    h, w = g.shape[:2]
    rows, row_lines = _edge_lines(g, 0)
    cols, col_lines = _edge_lines(g, 1)
    # Line p is the step after pixel p; -1 and the last pixel stand for the image's edges.
    # Of the shorter side: a wide photo pasted at 60 % of a tall backdrop's width spans
    # less than a third of its height. But it spans BOX_MAJOR of the width or of the
    # height: smaller boxes are mostly parts of the copy's own scene, and they scored
    # unrelated originals above the real one (copies cut to half left the shortlist).
    x0, x1 = _spans([-1] + col_lines + [w - 1], BOX_SIDE * min(w, h))
    y0, y1 = _spans([-1] + row_lines + [h - 1], BOX_SIDE * min(w, h))
    # Solid share of every (line, span) from cumulative sums: [line, span] for each side.
    row_sum = np.pad(np.cumsum(rows, 1), ((0, 0), (1, 0)))
    col_sum = np.pad(np.cumsum(cols, 1), ((0, 0), (1, 0)))
    top, bottom = (_solid(row_sum, y, x0, x1, h) for y in (y0, y1))
    left, right = (_solid(col_sum, x, y0, y1, w) for x in (x0, x1))
    # sides[k, i, j]: side k of the box spanning x-span i and y-span j; NaN on the image's edge
    sides = np.stack([top.T, bottom.T, left, right])
    inner = np.isfinite(sides).sum(axis=0)
    weakest = np.nanmin(np.where(np.isfinite(sides), sides, np.inf), axis=0)
    width, height = np.meshgrid(x1 - x0, y1 - y0, indexing="ij")
    solid = ((np.where(np.isfinite(sides), sides, BORDER_SOLID) * np.stack([width, width, height, height])).sum(0)
             / (2 * (width + height)))
    solid[(inner < 2) | (weakest < BOX_SOLID) | ((width < BOX_MAJOR * w) & (height < BOX_MAJOR * h))] = -1
    order = np.argsort(-solid, axis=None, kind="stable")[:BOXES]
    picked = [np.unravel_index(k, solid.shape) for k in order if solid.flat[k] >= 0]
    return [(int(x0[i]) + 1, int(y0[j]) + 1, int(x1[i]) + 1, int(y1[j]) + 1) for i, j in picked]


def _spans(lines: list[int], least: float) -> tuple[np.ndarray, np.ndarray]:
    """Every pair of lines at least `least` apart, as (starts, ends)."""
    lines = np.asarray(lines)
    start, end = np.meshgrid(lines, lines, indexing="ij")
    keep = end - start >= least
    return start[keep], end[keep]


def _solid(cumulative: np.ndarray, line: np.ndarray, start: np.ndarray, end: np.ndarray,
           size: int) -> np.ndarray:
    """[i, j]: share of edge pixels on `line[i]` from `start[j]` to `end[j]`; NaN where the
    line is the image's own edge."""
    inside = (line >= 0) & (line < size - 1)
    at = np.clip(line, 0, len(cumulative) - 1)[:, None]
    share = (cumulative[at, end[None] + 1] - cumulative[at, start[None] + 1]) / (end - start)[None]
    return np.where(inside[:, None], share, np.nan)


def _edge_lines(g: np.ndarray, axis: int) -> tuple[np.ndarray, list[int]]:
    """Edge pixels of the steps across `axis` (one row per line between two pixel rows,
    or columns; a step is the largest of the three channels': where a photo meets its
    backdrop the two often differ in hue more than in brightness), kept where it is the
    largest of the EDGE_RADIUS lines either way (texture has a step on most lines, so
    nearly every pixel of it would be an edge of some line; a pasted photo's side
    stands out of its neighbours), each widened by a line either way (resizing smears
    a step over two), and the EDGE_LINES lines with the longest unbroken run of them
    (texture has many edge pixels, a pasted photo's side a long run), at least 3 apart
    and not at the image's border (where JPEG and resizing leave a step of their own)."""
    diff = np.abs(np.diff(g, axis=axis))
    step = np.maximum(np.maximum(diff[..., 0], diff[..., 1]), diff[..., 2])  # max(axis=-1) is 3x slower
    step = step if axis == 0 else step.T
    edge = step >= EDGE_STEP
    for r in range(1, EDGE_RADIUS + 1):
        edge[r:] &= step[r:] >= step[:-r]
        edge[:-r] &= step[:-r] >= step[r:]
    wide = edge.copy()
    wide[1:] |= edge[:-1]
    wide[:-1] |= edge[1:]
    count = _longest_run(wide)
    lines: list[int] = []
    # A step's widened run is as long on the lines either side of it: of equal runs, the
    # line with the most edge pixels of its own (the first was taken: a pixel off).
    for line in np.lexsort((-edge.sum(axis=1), -count)):
        if len(lines) == EDGE_LINES or count[line] == 0:
            break
        if 2 <= line < len(count) - 2 and all(abs(line - other) > 2 for other in lines):
            lines.append(int(line))
    return wide, lines


def rotated_views(im: Image.Image) -> list[Image.Image]:
    """An evaluation image turned by a few angles, as a rotated copy shows it: within its
    own canvas (black corners) and on a canvas grown to hold it."""
    return [im.rotate(angle, Image.BICUBIC, expand=expand) for angle in ROTATIONS for expand in (False, True)]


CORNER = (0.7, 0.15)            # (side fraction, offset): half the area, off to a corner or edge


def shortlist_views(im: Image.Image) -> list[Image.Image]:
    """The views a recall-oriented shortlist adds: turned, cut to half toward an edge or
    corner, and grey (the colour descriptor scores a grey copy of a colourful photo low),
    whole and cut, either way round. Grey cuts also sit halfway between the others: a
    grey copy cut in between (and captioned) scores too low against either neighbour."""
    shift = CORNER[1]
    corners = corner_views(im, (-shift, 0, shift))
    between = corner_views(im, (-shift / 2, 0, shift / 2), centre=True)
    grey = [ImageOps.grayscale(v).convert("RGB") for v in [im, ImageOps.mirror(im)] + corners + between]
    return rotated_views(im) + corners + grey


def corner_views(im: Image.Image, offsets: tuple[float, ...], centre: bool = False) -> list[Image.Image]:
    """Crops to half the area moved by `offsets` toward each edge and corner (and not
    moved, with `centre`), and mirrored: a copy cut to one part of the photo."""
    out = [crop(im, CORNER[0], dx, dy) for dx in offsets for dy in offsets if centre or dx or dy]
    return out + [ImageOps.mirror(v) for v in out]


def _longest_run(edge: np.ndarray) -> np.ndarray:
    """Per row, the longest run of True, gaps of one pixel bridged."""
    edge = edge.copy()
    edge[:, 1:-1] |= edge[:, :-2] & edge[:, 2:]
    at = np.arange(edge.shape[1])
    last_gap = np.maximum.accumulate(np.where(edge, -1, at[None]), axis=1)
    return (at[None] - last_gap).max(axis=1)
