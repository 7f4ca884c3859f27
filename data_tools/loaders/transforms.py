"""The CPU image path shared by the backends: decode, crop boxes, resize, flip, normalise.

PIL decodes (torchvision's own decoder is deprecated since 0.29); when a crop is at least
twice the output size, libjpeg scales it down in the DCT while decoding (`draft`), far
cheaper than decoding every pixel and resizing them. Resizing a uint8 channels-last image
with torchvision's transforms.v2 runs torch's vectorised uint8 path, several times faster
than PIL's or DALI's CPU resize. Images stay uint8 and channels-last until the last
step, where one pass over the batch makes them float and normalised (ImageNet mean/std on
the 0..255 scale, the same numbers DALI is given).
"""
from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from data_tools.inputs.images import BadImage

# np.asarray(PIL image) is read-only; we only read it (the crop is copied before resizing).
warnings.filterwarnings("ignore", message="The given NumPy array is not writable", module=__name__)

MEAN = tuple(255 * m for m in (0.485, 0.456, 0.406))
STD = tuple(255 * s for s in (0.229, 0.224, 0.225))
RATIO = (3 / 4, 4 / 3)  # RandomResizedCrop's aspect-ratio range
SCALE = 1 / np.asarray(STD, np.float32)
SHIFT = -np.asarray(MEAN, np.float32) / np.asarray(STD, np.float32)


@dataclass(frozen=True)
class Sizes:
    image: int = 224        # side of the square the model sees
    resize: int = 256       # eval: shorter side before the centre crop
    min_scale: float = 0.08  # train: smallest crop area, as a fraction of the image


def random_box(height: int, width: int, min_scale: float, gen: np.random.Generator) -> tuple[int, int, int, int]:
    """(top, left, h, w): torchvision RandomResizedCrop's rule, drawn from `gen`."""
    area = height * width
    log_ratio = (math.log(RATIO[0]), math.log(RATIO[1]))
    for _ in range(10):
        target = area * gen.uniform(min_scale, 1.0)
        ratio = math.exp(gen.uniform(*log_ratio))
        w = round(math.sqrt(target * ratio))
        h = round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            return int(gen.integers(0, height - h + 1)), int(gen.integers(0, width - w + 1)), h, w
    h, w = height, width  # fallback: the central crop with the nearest allowed ratio
    if width / height < RATIO[0]:
        h = round(width / RATIO[0])
    elif width / height > RATIO[1]:
        w = round(height * RATIO[1])
    return (height - h) // 2, (width - w) // 2, h, w


def centre_box(height: int, width: int, sizes: Sizes) -> tuple[int, int, int, int]:
    """The window that resize(shorter side to sizes.resize) + centre crop(sizes.image) keeps."""
    side = min(height, width, max(1, round(sizes.image * min(height, width) / sizes.resize)))
    return (height - side) // 2, (width - side) // 2, side, side


def resize(image: torch.Tensor, box: tuple[int, int, int, int] | None, size: int, flip: bool) -> torch.Tensor:
    """Crop `box` of a 3×H×W uint8 image, resize it to size×size (antialiased bilinear) and
    flip it; returns size×size×3. Staying channels-last end to end keeps every copy a memcpy."""
    if box is not None:
        top, left, h, w = box
        image = image[:, top:top + h, left:left + w]
    pixels_last = image.permute(1, 2, 0).contiguous().permute(2, 0, 1)  # no copy for a whole HWC buffer
    # imported here: torchvision brings torch._dynamo (~170 MiB), which a process that only
    # reads cached features (the linear probe's head) does not need
    from torchvision.transforms.v2 import functional as tvf
    image = tvf.resize(pixels_last, [size, size], antialias=True).permute(1, 2, 0)
    return image.flip(1) if flip else image


def transform(data: bytes, train: bool, sizes: Sizes, gen: np.random.Generator) -> torch.Tensor:
    """JPEG bytes → S×S×3 uint8: RandomResizedCrop + flip (train) or resize + centre crop (eval).
    Raises BadImage when the bytes do not decode."""
    try:
        im = Image.open(io.BytesIO(data))
        width, height = im.size
        box = random_box(height, width, sizes.min_scale, gen) if train else centre_box(height, width, sizes)
        im, (top, left, h, w) = draft(im, box, sizes.image)
        im = im.convert("RGB") if im.mode != "RGB" else im
        # Only the crop is copied out of PIL: less to copy, and it arrives contiguous.
        pixels = np.asarray(im.crop((left, top, left + w, top + h)))
    except (OSError, SyntaxError, ValueError) as err:  # what PIL raises on bad data
        raise BadImage("decode_error", str(err)) from None
    flip = train and gen.random() < 0.5
    return resize(torch.from_numpy(pixels).permute(2, 0, 1), None, sizes.image, flip)


def draft(im: Image.Image, box: tuple[int, int, int, int], size: int):
    """Let libjpeg decode at 1/2, 1/4 or 1/8 scale when the crop stays >= size; box rescaled."""
    top, left, h, w = box
    factor = min(h, w) // size
    if factor < 2 or im.format != "JPEG":
        return im, box
    width, height = im.size
    im.draft("RGB", (width // factor, height // factor))
    sx, sy = im.size[0] / width, im.size[1] / height
    top, left = int(top * sy), int(left * sx)
    h = max(1, min(round(h * sy), im.size[1] - top))
    w = max(1, min(round(w * sx), im.size[0] - left))
    return im, (top, left, h, w)


def normalise(batch: torch.Tensor) -> torch.Tensor:
    """N×H×W×3 uint8 → (x - mean) / std as float32 N×3×H×W, channels_last, on the batch's device."""
    if batch.is_cuda:
        scale, shift = (torch.from_numpy(v).to(batch.device) for v in (SCALE, SHIFT))
        out = batch.float().mul_(scale).add_(shift)
    else:
        # numpy, one thread: torch's threaded ops would fight the loader's workers for the
        # cores, for a memory-bound job. Image by image, the second pass runs in cache.
        n, h, w, c = batch.shape
        rows, scale, shift = batch.numpy().reshape(n, h, w * c), np.tile(SCALE, w), np.tile(SHIFT, w)
        out = np.empty(rows.shape, np.float32)
        for image, result in zip(rows, out):
            np.multiply(image, scale, out=result, dtype=np.float32)
            result += shift
        out = torch.from_numpy(out).view(n, h, w, c)
    return out.permute(0, 3, 1, 2)


def top_up(items: list, want: int) -> list:
    """Fill the slots of skipped samples with the batch's good ones, so a batch keeps its size."""
    return items + [items[i % len(items)] for i in range(want - len(items))] if items else []


def pil_batch(plan, read, train: bool, sizes: Sizes, out: torch.Tensor | None = None):
    """(uint8 images, rows used, rows that failed) for one planned batch, into `out` if given."""
    gen = np.random.default_rng(plan.seed)
    images, good, failed = [], [], []
    for row in plan.rows:
        try:
            images.append(transform(read(row), train, sizes, gen))
            good.append(row)
        except BadImage:
            failed.append(row)
    images, good = top_up(images, len(plan.rows)), top_up(good, len(plan.rows))
    if out is None:
        out = torch.empty((len(plan.rows), sizes.image, sizes.image, 3), dtype=torch.uint8)
    out = out[:len(images)]
    if images:
        torch.stack(images, out=out)
    return out, np.asarray(good, np.int64), failed
