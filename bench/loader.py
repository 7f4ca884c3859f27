"""Benchmark the loader backends against the usual webdataset loop and the decode limit.

    python bench/loader.py --images 2000 --repeat 3 --size 500x375 --seconds 15

Generates photo-like JPEGs (launch.fixtures.synthetic.photo plus natural-image texture, one
process per core) and builds shards from them, each image stored --repeat times so an
epoch lasts several seconds (kept and reused when --workdir is given), then measures on
the same shards, train transforms (RandomResizedCrop 224 + flip + normalise), batch 64:

  decode    the decode limit: PIL full decode only (open + convert RGB), one process per core;
  baseline  the user's usual alternative: webdataset.WebDataset -> shuffle -> decode("pil")
            -> torchvision v2 RandomResizedCrop/flip/ToDtype/Normalize, DataLoader with one
            worker per core;
  pil, dali-cpu (and dali on a GPU)   data_tools.loaders.make_loader, all cores.

Each figure is img/s as training reads (data_tools.loaders.bottleneck.loader_rate): the
first batch (start-up) is left out, later epochs' worker starts are counted.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from io import BytesIO
from multiprocessing import Pool
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import webdataset as wds  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from torchvision.transforms import v2  # noqa: E402

from data_tools.build import BuildConfig, build  # noqa: E402
from data_tools.common.config import build as make_config  # noqa: E402
from data_tools.loaders import LoaderConfig, catalog, dali_available, make_loader  # noqa: E402
from data_tools.loaders.bottleneck import loader_rate  # noqa: E402
from launch.fixtures.synthetic import photo  # noqa: E402

TEXTURE = 40.0  # grey levels of 1/f texture: ~4.4 bits per pixel at quality 90, as photographs have
TAGS = ["#dog", "#cat", "#beach", "#sunset", "#mountain", "#tree", "#flower", "#car", "#bear"]
GOALS = {"baseline": 2.0, "decode": 0.85, "gpu": 8000}  # best CPU backend vs baseline, vs decode limit; dali img/s


def parse_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size must look like 500x375, got {text!r}") from None
    return width, height


def natural(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """launch.fixtures.synthetic.photo plus 1/f ("pink") noise, the power spectrum of natural
    images: without it the smooth synthetic images hold half a real photo's detail (1.7 vs
    3-4 bits per pixel at quality 90) and decode unrealistically fast."""
    fy, fx = np.fft.fftfreq(height)[:, None], np.fft.rfftfreq(width)[None, :]
    amplitude = 1.0 / np.maximum(np.hypot(fx, fy), 1.0 / max(width, height))
    pixels = np.asarray(photo(rng, width, height), np.float32)
    for c in range(3):
        field = np.fft.irfft2(amplitude * (rng.normal(size=amplitude.shape) + 1j * rng.normal(size=amplitude.shape)),
                              s=(height, width))
        pixels[..., c] += TEXTURE * field / field.std()
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _write_images(args) -> list[dict]:
    root, first, count, size = args
    rng = np.random.default_rng(first)
    rows = []
    for i in range(first, first + count):
        width, height = (int(s * rng.uniform(0.85, 1.15)) for s in size)
        natural(rng, width, height).save(root / "imgs" / f"{i:06d}.jpg", quality=90)
        rows.append({"path": f"imgs/{i:06d}.jpg", "tags": list(rng.choice(TAGS, rng.integers(1, 4), replace=False))})
    return rows


def make_shards(workdir: Path, images: int, repeat: int, size: tuple[int, int], cores: int) -> Path:
    """Shards of `images` generated JPEGs, each stored `repeat` times; reused when workdir
    already holds this very set."""
    out, stamp = workdir / "shards", workdir / "bench-loader.json"
    wanted = {"images": images, "repeat": repeat, "size": list(size), "texture": TEXTURE}
    if stamp.is_file() and json.loads(stamp.read_text()) == wanted and (out / "manifest.json").is_file():
        print(f"shards: reusing {out}", flush=True)
        return out
    shutil.rmtree(workdir / "corpus", ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    root = workdir / "corpus"
    (root / "imgs").mkdir(parents=True)
    start = time.perf_counter()
    step = -(-images // cores)
    with Pool(cores) as pool:
        parts = pool.map(_write_images, [(root, i, min(step, images - i), size) for i in range(0, images, step)])
    with open(root / "tags.jsonl", "w") as f:
        for _ in range(repeat):  # long epochs, so start-up is a small part of each (see steady_rate)
            for row in (r for part in parts for r in part):
                f.write(json.dumps(row) + "\n")
    per_shard = max(16, images * repeat // (4 * cores))  # several shards per worker, as on a real data set
    build(make_config(BuildConfig, [], [f"input.manifest={root / 'tags.jsonl'}", f"output={out}",
                                        "progress=false", f"shards.samples={per_shard}"]))
    stamp.write_text(json.dumps(wanted))
    print(f"shards: generated and built in {time.perf_counter() - start:.0f}s", flush=True)
    return out


def describe(shards: Path) -> str:
    cat = catalog.load(shards)
    with Image.open(BytesIO(catalog.Reader(cat)(0))) as im:
        width, height = im.size
    mean = cat.table(0).size.mean()
    return (f"{len(cat)} JPEGs in {len(cat.files)} shards, ~{width}x{height}, mean {mean / 1024:.0f} KB "
            f"({8 * mean / (width * height):.1f} bits/pixel)")


def baseline_loader(shards: Path, workers: int, batch: int, num_classes: int) -> DataLoader:
    urls = sorted(str(p) for p in shards.glob("*.tar"))
    augment = v2.Compose([v2.RandomResizedCrop(224), v2.RandomHorizontalFlip(), v2.PILToTensor(),
                          v2.ToDtype(torch.float32, scale=True),
                          v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])

    def khot(meta: dict) -> torch.Tensor:
        target = torch.zeros(num_classes)
        target[meta["labels"]] = 1.0
        return target

    data = (wds.WebDataset(urls, shardshuffle=len(urls), empty_check=False).shuffle(1000).decode("pil")
            .to_tuple("jpg", "json").map_tuple(augment, khot))
    return DataLoader(data, batch_size=batch, num_workers=workers)


def _decode_for(args) -> int:
    directory, first, step, seconds = args
    cat = catalog.load(directory)
    read = catalog.Reader(cat)
    blobs = [read(row) for row in range(first, len(cat), step)]
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for blob in blobs:
            Image.open(BytesIO(blob)).convert("RGB")
        count += len(blobs)
    return count / (time.perf_counter() - start)


def decode_limit(shards: Path, cores: int, seconds: float) -> float:
    with Pool(cores) as pool:
        return sum(pool.map(_decode_for, [(shards, i, cores, seconds) for i in range(cores)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000, help="distinct images to generate")
    parser.add_argument("--repeat", type=int, default=3, help="copies of each image in the shards")
    parser.add_argument("--size", type=parse_size, default=(500, 375), help="mean image size, e.g. 500x375")
    parser.add_argument("--seconds", type=float, default=15.0, help="measuring time per figure")
    parser.add_argument("--workers", type=int, default=0, help="cores to use (0: every core)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workdir", type=Path, help="keep the shards here and reuse them")
    args = parser.parse_args()
    cores = args.workers or len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as tmp:
        shards = make_shards(args.workdir or Path(tmp), args.images, args.repeat, args.size, cores)
        num_classes = catalog.load(shards).num_classes
        print(f"shards: {describe(shards)}", flush=True)
        print(f"measuring {args.seconds:.0f}s each, {cores} cores, batch {args.batch_size}, train transforms at 224",
              flush=True)
        limit = decode_limit(shards, cores, args.seconds)
        print(f"  decode limit (PIL decode only, {cores} processes): {limit:8.0f} img/s ({limit / cores:.0f} per core)",
              flush=True)
        base = loader_rate(baseline_loader(shards, cores, args.batch_size, num_classes), args.seconds)
        print(f"  baseline (webdataset + PIL + torchvision):  {base:8.0f} img/s", flush=True)
        backends = [("pil", "cpu"), ("dali-cpu", "cpu")] if dali_available() else [("pil", "cpu")]
        if torch.cuda.is_available():
            backends += [("dali", "cuda"), ("pil", "cuda")]
        rates = {}
        for backend, device in backends:
            loader = make_loader(LoaderConfig(backend=backend, batch_size=args.batch_size, workers=cores), shards,
                                 device=device)
            rates[backend, device] = loader_rate(loader, args.seconds)
            rate = rates[backend, device]
            print(f"  {backend:8s} on {device:4s}: {rate:8.0f} img/s = {rate / base:4.2f}x baseline, "
                  f"{rate / limit:4.0%} of the decode limit", flush=True)
        best = max(rate for (_, device), rate in rates.items() if device == "cpu")
        print(f"best CPU backend: {best / base:.2f}x baseline (goal >= {GOALS['baseline']:.1f}x), "
              f"{best / limit:.0%} of the decode limit (goal >= {GOALS['decode']:.0%})")
        if ("dali", "cuda") in rates:
            print(f"dali on the GPU: {rates['dali', 'cuda']:.0f} img/s (goal >= {GOALS['gpu']})")


if __name__ == "__main__":
    main()
