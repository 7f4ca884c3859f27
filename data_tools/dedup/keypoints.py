"""Local-feature verification of a candidate pair: SIFT keypoints of both images, matched
with Lowe's ratio test, and an affine fit by RANSAC; the pair is a copy when enough
matches agree with one affine map and they cover enough of the evaluation image.

An affine map covers what web copies do to geometry: scale, crop, rotation, squeeze,
and a paste into a larger photo or a screenshot (the evaluation image is then a region
of the training image). SIFT descriptors are not mirror-invariant, so the training
image's descriptors are also matched mirrored. Unrelated photos that the global descriptor confuses
(same layout and colours) share no keypoint geometry: their matches do not fit one map.

The evaluation side's keypoints are computed once and kept in a file that is
memory-mapped (KeypointStore): a fixed number of rows per image, so image i is a slice.
"""
from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from data_tools.dedup import views

SIDE = 256          # longer side of both images when keypoints are detected
FEATURES = 256      # keypoints kept per image (the strongest)
RATIO = 0.8         # Lowe's ratio test
RANSAC_PX = 5.0     # reprojection error of an inlier, pixels at SIDE
FRAME_MARGIN = 6    # pixels at SIDE inside a cut frame's edge where keypoints are not kept
EDGE_LINE = 2       # pixels of a thin line left out before looking for a frame past it
FRAMES = 3          # frames inside frames looked for (a mount: band, line, band)
MIN_INLIERS = 8     # calibrated on bench/dedup.py (docs/data.md)
MIN_COVER = 0.05    # share of the evaluation image's area inside the inliers' hull
MAX_SCALE = 8.0     # a copy's map scales by at most this, up or down
MAX_SQUEEZE = 2.0   # nor stretches one axis more than this against the other
SCREEN_SIDE = 128   # longer side of a training image in the screen before full verification
SCREEN_INLIERS = 4  # fewer inliers than this with every candidate at SCREEN_SIDE: unrelated

_SIFT = None


def _sift():
    global _SIFT
    if _SIFT is None:
        _SIFT = cv2.SIFT_create(nfeatures=FEATURES)
    return _SIFT


def grey(im: Image.Image, side: int = SIDE) -> np.ndarray:
    """uint8 grey image with its longer side `side`."""
    scale = side / max(im.size)
    size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
    return np.asarray(im.convert("L").resize(size, Image.BILINEAR), np.uint8)


def features(im: Image.Image, side: int = SIDE) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """(xy float32 (n, 2), descriptors uint8 (n, 128), (width, height)) detected at `side`;
    xy and size in pixels at SIDE, where RANSAC_PX holds."""
    return detect(grey(im, side))


def detect(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """features() of a grey image already at its size (the longer side is the `side`)."""
    side = max(pixels.shape)
    points, desc = _sift().detectAndCompute(pixels, inside_frame(pixels))
    size = tuple(round(v * SIDE / side) for v in pixels.shape[::-1])
    if desc is None or not points:
        return np.zeros((0, 2), np.float32), np.zeros((0, 128), np.uint8), size
    xy = np.float32([p.pt for p in points]) * np.float32(SIDE / side)
    return xy, np.clip(desc, 0, 255).astype(np.uint8), size


# A SIFT descriptor is 4 x 4 cells (rows, columns) x 8 orientation bins, in the keypoint's
# own frame. Mirroring the image mirrors that frame: the cell rows come in reverse order and
# each orientation bin k becomes -k. The permutation gives a keypoint's descriptor in the
# mirrored image without detecting again (half the cost; 93-100 % of the inliers that
# detecting on the mirrored image finds, on 10 real photos and their flipped copies).
MIRROR = np.arange(128).reshape(4, 4, 8)[::-1, :, [(-k) % 8 for k in range(8)]].ravel()


def inside_frame(pixels: np.ndarray) -> np.ndarray | None:
    """Where keypoints may be: inside any flat frames (views.frame_box; a mount's band, its
    line, the next band, each past EDGE_LINE pixels of whatever the last cut left),
    FRAME_MARGIN in from their edge; None where there is no frame. The corners of a frame
    and of its lines are keypoints that match any other framed photo's: of 20 pairs of
    unrelated scenes in white mounts with a black line, 6 fit 8-16 inliers (repeated
    keypoints counted), most spanning 79 % of the image."""
    h, w = pixels.shape
    box = (0, 0, w, h)
    for _ in range(FRAMES):
        left, top, right, bottom = (box[0] + EDGE_LINE, box[1] + EDGE_LINE, box[2] - EDGE_LINE, box[3] - EDGE_LINE)
        if right - left < 8 or bottom - top < 8:
            break
        cut = views.frame_box(Image.fromarray(pixels[top:bottom, left:right]))
        if cut == (0, 0, right - left, bottom - top):
            break
        box = (left + cut[0], top + cut[1], left + cut[2], top + cut[3])
    if box == (0, 0, w, h):
        return None
    m = math.ceil(FRAME_MARGIN * max(h, w) / SIDE)
    mask = np.zeros_like(pixels)
    mask[box[1] + m:box[3] - m, box[0] + m:box[2] - m] = 255
    return mask


def query_features(im: Image.Image, side: int = SIDE) -> list[tuple[np.ndarray, np.ndarray]]:
    """A training image's keypoints as they are and as the mirrored image has them (at the
    same positions: a mirrored copy maps onto them by an affine map with a reflection)."""
    return both_sides(features(im, side))


def both_sides(found: tuple[np.ndarray, np.ndarray, tuple[int, int]]) -> list[tuple[np.ndarray, np.ndarray]]:
    xy, desc, _ = found
    return [(xy, desc), (xy, np.ascontiguousarray(desc[:, MIRROR]))]


def screen_pixels(im: Image.Image) -> np.ndarray:
    """What the screen looks at: the image the scan decoded for its views, grey at
    SCREEN_SIDE (the scan's workers send this, not the image, with their vectors)."""
    return grey(im, SCREEN_SIDE)


def screened_out(pixels: np.ndarray, candidates: list[tuple[np.ndarray, np.ndarray, tuple[int, int]]],
                 least: int = SCREEN_INLIERS) -> bool:
    """Whether a training image is unrelated to all its candidates by a cheap first look:
    its keypoints in `pixels` (screen_pixels: a quarter of the pixels of full
    verification, a third of SIFT's time, no second decode) fit fewer than `least`
    inliers with every one. Copies keep enough keypoints at that size; unrelated images
    rarely fit even 4 (bench/dedup.py, docs/benchmarks.md)."""
    if least <= 0:
        return False
    found = match_all(both_sides(detect(pixels)), candidates)
    return max((f["inliers"] for f in found), default=0) < least


def match(query: list[tuple[np.ndarray, np.ndarray]], xy: np.ndarray, desc: np.ndarray,
          size: tuple[int, int]) -> dict:
    """The best of the query's sides against one evaluation image's keypoints:
    {"inliers", "cover", "pairs": [(eval x, y, train x, y), ...] (the inliers)}."""
    return match_all(query, [(xy, desc, size)])[0]


def match_all(query: list[tuple[np.ndarray, np.ndarray]],
              candidates: list[tuple[np.ndarray, np.ndarray, tuple[int, int]]]) -> list[dict]:
    """match() of the query against each candidate. The nearest two keypoints of every
    candidate come from one matrix product of the query's descriptors (both sides) with
    all candidates' at once: a BLAS product is 2-3 times faster than a matcher per pair."""
    found = [{"inliers": 0, "cover": 0.0, "pairs": []} for _ in candidates]
    usable = [c for c, (_, desc, _) in enumerate(candidates) if len(desc) >= 3]
    sides = [(qxy, qdesc.astype(np.float32)) for qxy, qdesc in query if len(qdesc) >= 3]
    if not usable or not sides:
        return found
    nearest = _two_nearest(np.concatenate([d for _, d in sides]), [candidates[c][1] for c in usable])
    for slot, c in enumerate(usable):
        xy, _, size = candidates[c]
        start = 0
        for qxy, qdesc in sides:
            first, second, index = (a[start:start + len(qdesc), slot] for a in nearest)
            start += len(qdesc)
            good = np.flatnonzero(first < RATIO * second)
            if len(good) >= 3:
                fit = _fit(xy[index[good]], qxy[good], size)
                if fit["inliers"] > found[c]["inliers"]:
                    found[c] = fit
    return found


def _two_nearest(query: np.ndarray, descs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(L2 distance to the nearest, to the second nearest, index of the nearest), each
    (queries, candidates), within each candidate's descriptors (padded to one length).
    A query's own squared norm is the same for all of its distances: added to the two
    nearest only, not to the whole matrix."""
    width = max(len(d) for d in descs)
    stacked = np.zeros((len(descs), width, 128), np.float32)
    squared = np.full((len(descs), width), np.inf, np.float32)   # padding is never near
    for c, d in enumerate(descs):
        stacked[c, :len(d)] = d
        squared[c, :len(d)] = (stacked[c, :len(d)] ** 2).sum(axis=1)
    dist = (query * np.float32(-2)) @ stacked.reshape(-1, 128).T
    dist += squared.reshape(1, -1)
    dist = dist.reshape(len(query), len(descs), width)
    index = dist.argmin(axis=2)
    first = np.take_along_axis(dist, index[..., None], 2)[..., 0]
    np.put_along_axis(dist, index[..., None], np.inf, 2)
    second = dist.min(axis=2)
    own = (query ** 2).sum(axis=1, keepdims=True)
    return np.sqrt(np.maximum(first + own, 0)), np.sqrt(np.maximum(second + own, 0)), index


def _fit(src: np.ndarray, dst: np.ndarray, size: tuple[int, int]) -> dict:
    """The affine map of evaluation points `src` onto training points `dst` by RANSAC, as
    match() reports it; no inliers where the map is not one a copy can have."""
    fit, mask = cv2.estimateAffine2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=RANSAC_PX,
                                     maxIters=500, confidence=0.99)
    if mask is None or not plausible(fit):
        return {"inliers": 0, "cover": 0.0, "pairs": []}
    keep = mask.ravel().astype(bool)
    pairs = np.concatenate([src[keep], dst[keep]], axis=1)
    # SIFT puts several keypoints at one place (a blob at several scales, a round one at
    # several orientations): one chance correspondence came in 7 times, 9 "inliers" of two
    # unrelated scenes. A pair of places counts once.
    return {"inliers": len(np.unique(pairs.round(), axis=0)), "cover": _cover(src[keep], size),
            "pairs": pairs.round(1).tolist()}


def plausible(fit: np.ndarray | None) -> bool:
    """An affine map a copy can have: scaled by at most MAX_SCALE either way, squeezed by at
    most MAX_SQUEEZE. Chance matches between unrelated images fit wilder maps (a strip
    of matches on a line fits a degenerate one)."""
    if fit is None or not np.isfinite(fit).all():  # RANSAC on (near) coincident points
        return False
    low, high = sorted(np.linalg.svd(fit[:, :2], compute_uv=False))
    return 1 / MAX_SCALE <= low and high <= MAX_SCALE and high <= MAX_SQUEEZE * low


def _cover(points: np.ndarray, size: tuple[int, int]) -> float:
    if len(points) < 3:
        return 0.0
    return float(cv2.contourArea(cv2.convexHull(points))) / float(size[0] * size[1])


def is_copy(found: dict, min_inliers: int = MIN_INLIERS, min_cover: float = MIN_COVER) -> bool:
    return found["inliers"] >= min_inliers and found["cover"] >= min_cover


class KeypointStore:
    """Every evaluation image's keypoints in two files under `folder`, FEATURES rows per
    image (unused rows zero): xy and size as float16/int16, descriptors as uint8. Opened
    memory-mapped, so RAM holds only the pages the verified pairs touch."""

    def __init__(self, folder: Path, count: int | None = None):
        self.folder = Path(folder)
        mode = "r" if count is None else "w+"
        if count is None:
            count = int(np.load(self.folder / "keypoints_count.npy"))
        else:
            self.folder.mkdir(parents=True, exist_ok=True)
            np.save(self.folder / "keypoints_count.npy", np.int64(count))
        self.count = count
        self.desc = np.memmap(self.folder / "keypoints_desc.u8", np.uint8, mode, shape=(max(1, count), FEATURES, 128))
        self.xy = np.memmap(self.folder / "keypoints_xy.f16", np.float16, mode, shape=(max(1, count), FEATURES, 2))
        self.meta = np.memmap(self.folder / "keypoints_meta.i32", np.int32, mode, shape=(max(1, count), 3))

    def put(self, i: int, xy: np.ndarray, desc: np.ndarray, size: tuple[int, int]) -> None:
        n = min(len(xy), FEATURES)
        self.xy[i, :n], self.desc[i, :n] = xy[:n], desc[:n]
        self.meta[i] = (n, *size)

    def get(self, i: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
        n, w, h = (int(v) for v in self.meta[i])
        return np.asarray(self.xy[i, :n], np.float32), np.asarray(self.desc[i, :n]), (w, h)

    def flush(self) -> None:
        for array in (self.desc, self.xy, self.meta):
            array.flush()

    @staticmethod
    def bytes_per_image() -> int:
        return FEATURES * (128 + 2 * 2) + 3 * 4
