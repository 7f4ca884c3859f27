"""Start-up and memory of one rank against the size of the shard set (goal: 1e9 samples with
start-up < 10 s and peak RSS < 2 GB per rank, per-sample cost flat).

    python bench/scale.py --sizes 10000 100000 1000000 --simulate 1000000000 --world 8 --remote 100000

Remote (goal: >= 90 % of local disk): steady img/s of one loader over the --remote set
served by a moto S3 server process on 127.0.0.1 against the same shards on local disk, in
one run (pil, a worker per core, 64x64 crops, train).

Generates one shard of tiny JPEGs (a few distinct images' bytes reused, 2-3 Zipf tags each,
written with data_tools.format.shards.write_shard: tar, DALI index, sample table), then shard sets
of each size made of hard links to it, each with its manifest and resampling fit. The
simulated set has the manifest, per-shard counts and the resampling fit of the full size,
but only the shards the measured rank reads first are on disk (hard links again): a loader
that touched any other shard would fail. Each measurement is a fresh process: rank 0 of
--world, backend pil, one worker, train phase with square-root resampling; start-up is
construction to the first batch, RSS the process's peak, and what the loader added to the
resident memory of the process as imported (torch alone is most of the peak); the
worker process's peak is printed apart.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from data_tools.format import resampling, shards, tables  # noqa: E402
from data_tools.loaders.plan import Plan  # noqa: E402
from launch.fixtures.synthetic import photo  # noqa: E402

TAGS = 1000
PER_SHARD = 5000


def shard_samples(count: int, seed: int = 0):
    gen = np.random.default_rng(seed)
    jpegs = []
    for i in range(8):
        data = io.BytesIO()
        photo(gen, 48, 40).save(data, format="JPEG", quality=85)
        jpegs.append(data.getvalue())
    popularity = 1 / np.arange(1, TAGS + 1)
    drawn = gen.choice(TAGS, size=(count, 3), p=popularity / popularity.sum())
    for i in range(count):
        labels = sorted(set(drawn[i, :2 + i % 2].tolist()))
        yield f"{i:012d}", jpegs[i % len(jpegs)], {"labels": labels}


def template(root: Path) -> tuple[Path, dict]:
    """One real shard (tar, index, table) whose files every set links to."""
    path = root / "template.tar"
    if not path.is_file():
        info = shards.write_shard(path, shard_samples(PER_SHARD))
        (root / "template.json").write_text(json.dumps(info))
    return path, json.loads((root / "template.json").read_text())


def link(template_tar: Path, directory: Path, name: str) -> None:
    for suffix in (".tar", ".idx", ".table"):
        target = directory / (name[: -len(".tar")] + suffix)
        if not target.exists():
            os.link(template_tar.with_suffix(suffix), target)


def tag_counts(template_tar: Path, shards_total: int) -> list[int]:
    table = tables.Table(template_tar.with_suffix(".table"))
    return (np.bincount(np.asarray(table.label_idx), minlength=TAGS) * shards_total).tolist()


def manifest(count: int, info: dict, counts: list[int]) -> dict:
    entries = [{"shard": i, "file": shards.shard_file("train", i), "index": shards.index_file(shards.shard_file("train", i)),
                "samples": PER_SHARD, **info} for i in range(count)]
    return {"format": "wsl-shards/1", "name": "train", "label_type": "multi", "num_classes": TAGS,
            "num_samples": count * PER_SHARD, "num_shards": count, "shards": entries, "tag_counts": counts}


def make_set(root: Path, samples: int, simulate_world: int | None = None) -> Path:
    """A shard set of `samples`; simulated: only rank 0's first shards present."""
    count = samples // PER_SHARD
    directory = root / (f"sim-{samples}" if simulate_world else f"set-{samples}")
    if (directory / "manifest.json").is_file():
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    tar, info = template(root)
    data = manifest(count, info, tag_counts(tar, count))
    if simulate_world:
        # The fit's passes would read every table; the tables are all one template, so
        # its fit on one shard holds for each, and every shard has the same share.
        one = tables.Table(tar.with_suffix(".table")).usable_labels()
        log_weight, _ = resampling.fit_shards(lambda: [one], TAGS)
        plan = Plan(np.full(count, PER_SHARD))
        first = plan.stream(0).pieces[: 4, 0].tolist()  # rank 0's first shards, then shard 0 (checked at load)
        for shard in {*first, 0}:
            link(tar, directory, shards.shard_file("train", shard))
        shards.write_json(directory / "manifest.json", data)
        tables.write(directory / resampling.FILE, {"tag_log_weight": log_weight,
                                                    "shard_weight": np.full(count, float(PER_SHARD))},
                     fingerprint=shards.fingerprint(data), unusable=0)
        return directory
    for i in range(count):
        link(tar, directory, shards.shard_file("train", i))
    shards.write_json(directory / "manifest.json", data)
    resampling.fit(directory, progress=False)
    return directory


def resident_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def measure(directory: str, world: int) -> dict:
    """In a fresh process: construction to first batch, and peak memory."""
    import torch  # noqa: F401  (imported before the clock starts, as a trainer has it)

    from data_tools.loaders import LoaderConfig, make_loader
    before = resident_mb()
    start = time.perf_counter()
    loader = make_loader(LoaderConfig(backend="pil", batch_size=64, image_size=32, resize_size=40, workers=1),
                         directory, rank=0, world_size=world)
    built = time.perf_counter() - start
    batches = iter(loader)
    next(batches)
    first = time.perf_counter() - start
    after = resident_mb()
    batches.close()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"construct_s": built, "first_batch_s": first, "rss_mb": rss, "loader_mb": after - before,
            "worker_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def remote_vs_local(directory: Path, seconds: float) -> tuple[float, float]:
    """(local img/s, S3 img/s) of the same shards; the S3 server is moto's, on localhost."""
    import s3fs

    from data_tools.loaders import LoaderConfig, make_loader
    from data_tools.loaders.bottleneck import loader_rate

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.environ.update({"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "bench",
                       "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"})
    try:
        for _ in range(600):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        fs = s3fs.S3FileSystem(skip_instance_cache=True)
        fs.mkdir("bench")
        for path in sorted(directory.iterdir()):
            fs.put_file(str(path), f"bench/set/{path.name}")
        cfg = LoaderConfig(backend="pil", batch_size=64, image_size=64, resize_size=72, workers=0)
        with tempfile.TemporaryDirectory() as cache:
            local = loader_rate(make_loader(cfg, directory), seconds)
            cfg.cache_dir = cache
            remote = loader_rate(make_loader(cfg, "s3://bench/set"), seconds)
        return local, remote
    finally:
        server.terminate()
        server.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--simulate", type=int, default=1_000_000_000, help="samples of the simulated set (0: none)")
    parser.add_argument("--world", type=int, default=8)
    parser.add_argument("--remote", type=int, default=100_000, help="samples of the set read from S3 (0: skip)")
    parser.add_argument("--seconds", type=float, default=20.0, help="of each remote/local rate measurement")
    parser.add_argument("--workdir", help="keep the generated sets here (default: a temporary folder)")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.world)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.workdir or tmp)
        root.mkdir(parents=True, exist_ok=True)
        runs = [(n, make_set(root, n)) for n in args.sizes]
        if args.simulate:
            runs.append((args.simulate, make_set(root, args.simulate, args.world)))
        print(f"rank 0 of {args.world}, {PER_SHARD} samples per shard, batch 64 (pil, 1 worker)")
        print(f"{'samples':>14} {'shards':>8} {'construct s':>12} {'first batch s':>14} {'peak RSS MB':>12} "
              f"{'of it loader MB':>16} {'worker RSS MB':>14}")
        for n, directory in runs:
            out = subprocess.run([sys.executable, __file__, "--measure", str(directory), "--world", str(args.world)],
                                 capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.splitlines()[-1])
            print(f"{n:>14,} {n // PER_SHARD:>8,} {r['construct_s']:>12.2f} {r['first_batch_s']:>14.2f} "
                  f"{r['rss_mb']:>12.0f} {r['loader_mb']:>16.0f} {r['worker_rss_mb']:>14.0f}", flush=True)
        if args.remote:
            local, s3 = remote_vs_local(make_set(root, args.remote), args.seconds)
            print(f"remote: {args.remote:,} samples, local disk {local:.0f} img/s, S3 (moto on 127.0.0.1) "
                  f"{s3:.0f} img/s = {s3 / local:.0%} of local (goal >= 90 %)")


if __name__ == "__main__":
    main()
