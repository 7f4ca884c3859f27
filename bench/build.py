"""Benchmark `wsl data build` against the usual single-process PIL + webdataset loop.

    python bench/build.py --images 2000 --size 500x375

Generates a photo-like JPEG corpus once (launch.fixtures.synthetic.write_corpus; kept and
reused when --workdir is given), then times, on the same corpus and shard size:

  baseline  for each manifest row: PIL open -> convert('RGB') -> re-encode JPEG q95 ->
            webdataset.ShardWriter(maxcount=N) writing jpg + json, in one process;
  build     data_tools.build.build (what `wsl data build` runs), workers=0 (all cores),
            progress off, shards.samples=N: WordNet labels, vocabulary, both passes,
            DALI indexes, sha256 and manifest included.

and prints `build: X img/s, baseline: Y img/s, ratio: Z.ZZx` (best of --repeat runs).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import webdataset as wds  # noqa: E402
from PIL import Image  # noqa: E402

from data_tools.build import BuildConfig, build  # noqa: E402
from data_tools.common.config import build as make_config  # noqa: E402
from launch.fixtures.synthetic import HASHTAGS, write_corpus  # noqa: E402

# Tags WordNet knows, so both sides write every image (none is dropped for its tags).
KNOWN_TAGS = [t for t in HASHTAGS if t not in ("#xyzzyq", "#instagood")]


def parse_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size must look like 500x375, got {text!r}") from None
    if width < 16 or height < 16:
        raise argparse.ArgumentTypeError("--size: each side must be >= 16")
    return width, height


def corpus(workdir: Path, images: int, size: tuple[int, int]) -> Path:
    """The corpus manifest; generated unless workdir already holds this very corpus."""
    root = workdir / "corpus"
    stamp = root / "corpus.json"
    wanted = {"images": images, "size": list(size), "tags": KNOWN_TAGS}
    if stamp.is_file() and json.loads(stamp.read_text()) == wanted:
        print(f"corpus: reusing {images} images in {root}", flush=True)
        return root / "tags.jsonl"
    shutil.rmtree(root, ignore_errors=True)
    start = time.perf_counter()
    manifest = write_corpus(root, images, seed=0, size=size, tags=KNOWN_TAGS)
    stamp.write_text(json.dumps(wanted))
    print(f"corpus: {images} JPEGs of ~{size[0]}x{size[1]} written in {time.perf_counter() - start:.1f}s "
          f"({sum(p.stat().st_size for p in (root / 'imgs').iterdir()) / 2**20:.1f} MiB)", flush=True)
    return manifest


def baseline(manifest: Path, out: Path, per_shard: int) -> int:
    """The usual loop: decode, convert, re-encode, write, one image after another."""
    out.mkdir(parents=True)
    rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    written = 0
    with wds.ShardWriter(str(out / "train-%06d.tar"), maxcount=per_shard, verbose=0) as sink:
        for i, row in enumerate(rows):
            path = manifest.parent / row["path"]
            with Image.open(path) as im:
                rgb = im.convert("RGB")
            buf = io.BytesIO()
            rgb.save(buf, format="JPEG", quality=95)
            sink.write({"__key__": f"{i:012d}", "jpg": buf.getvalue(),
                        "json": {"tags": row["tags"], "path": str(path)}})
            written += 1
    return written


def ours(manifest: Path, out: Path, per_shard: int, workers: int) -> int:
    cfg = make_config(BuildConfig, [], [f"input.manifest={manifest}", f"output={out}", f"workers={workers}",
                                        "progress=false", f"shards.samples={per_shard}"])
    return build(cfg)["num_samples"]


def timed(fn, *args) -> tuple[int, float]:
    start = time.perf_counter()
    count = fn(*args)
    return count, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000, help="corpus size (default 2000)")
    parser.add_argument("--size", type=parse_size, default=(500, 375), help="image size WxH (default 500x375)")
    parser.add_argument("--workdir", type=Path, help="where the corpus and shards go (default: a temp dir, removed)")
    parser.add_argument("--shard-samples", type=int, default=250, help="samples per shard, both sides (default 250)")
    parser.add_argument("--workers", type=int, default=0, help="build workers (default 0: one per core)")
    parser.add_argument("--repeat", type=int, default=1, help="time each side this many times, keep the best")
    args = parser.parse_args(argv)
    if min(args.images, args.shard_samples, args.repeat) < 1:
        parser.error("--images, --shard-samples and --repeat must be >= 1")

    temporary = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="wsl-bench-build-")) if temporary else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        manifest = corpus(workdir, args.images, args.size)
        best = {}
        for attempt in range(args.repeat):
            for name, fn, extra in (("baseline", baseline, ()), ("build", ours, (args.workers,))):
                shutil.rmtree(workdir / name, ignore_errors=True)  # a fresh build, never a resume
                count, seconds = timed(fn, manifest, workdir / name, args.shard_samples, *extra)
                who = "1 process" if name == "baseline" else f"workers={args.workers or os.cpu_count()}"
                print(f"{name}: {count} images in {seconds:.2f}s ({who})", flush=True)
                if name not in best or seconds < best[name][1]:
                    best[name] = (count, seconds)
        (n_base, t_base), (n_ours, t_ours) = best["baseline"], best["build"]
        if n_ours != n_base:
            print(f"warning: build wrote {n_ours} samples, baseline {n_base}", file=sys.stderr)
        ours_rate, base_rate = n_ours / t_ours, n_base / t_base
        print(f"build: {ours_rate:.1f} img/s, baseline: {base_rate:.1f} img/s, ratio: {ours_rate / base_rate:.2f}x")
    finally:
        if temporary:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
