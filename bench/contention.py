"""Training on a busy machine: the tiny pretraining's img/s alone and beside busy processes,
with each rank's thread budget (threads=0, the default) and without it (threads=-1: torch's
default, a thread per core, OpenMP's spinning waits), in the same run.

    python bench/contention.py --repeat 3

Load: `--busy` pure-Python spin loops per core (default 2), started beside the run and
stopped after it. A fair share of the unloaded rate is unloaded / (1 + busy per core): the
run's own busy threads (the training thread, its loader workers) would get that share of
the CPU if the kernel split it evenly among all runnable processes. Goal: with the budget,
loaded img/s >= a fair share of the unloaded img/s of the same setting.

Each figure is the median img/s of metrics.jsonl's rows (every 5 steps of 32 images) after
the first (start-up: workers' first batches), `wsl pretrain -c configs/pretrain/tiny.yaml`
(resnext_tiny, 64 px crops, batch 32, dali-cpu on CPU, a worker per core) on generated
photo-like JPEGs, run as a user runs it: `python -m launch.cli pretrain` in a new process.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from data_tools.build import BuildConfig, build  # noqa: E402
from data_tools.common.config import build as make_config  # noqa: E402
from data_tools.common.threads import cores  # noqa: E402
from launch.fixtures.synthetic import write_corpus  # noqa: E402

SPIN = "import time\nend = time.time() + {seconds}\nwhile time.time() < end:\n    pass\n"


def shards(workdir: Path, images: int) -> Path:
    out = workdir / "shards"
    if not (out / "manifest.json").is_file():
        manifest = write_corpus(workdir / "corpus", images, size=(160, 120))
        build(make_config(BuildConfig, [], [f"input.manifest={manifest}", f"output={out}", "progress=false",
                                            "shards.samples=100"]))
    return out


def rate(shard_dir: Path, run_dir: Path, threads: int, images: int) -> float:
    """Median img/s of one tiny pretraining run after its first logged window."""
    cmd = [sys.executable, "-m", "launch.cli", "pretrain", "-c", "configs/pretrain/tiny.yaml",
           f"data.train={shard_dir}", f"run_dir={run_dir}", f"threads={threads}", f"train.total_images={images}",
           "optim.warmup_images=64", "log.every_steps=5", "train.bottleneck_seconds=0",
           f"checkpoint.every_images={images}"]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS")}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"pretraining failed:\n{proc.stderr[-3000:]}")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return statistics.median(row["img_per_s"] for row in rows[1:] if "img_per_s" in row)


def loaded(busy: int, fn, *args):
    """fn(*args) beside `busy` spin loops (each bounded by an hour, and stopped after fn)."""
    spinners = [subprocess.Popen([sys.executable, "-c", SPIN.format(seconds=3600)]) for _ in range(busy)]
    try:
        time.sleep(1)  # the spinners running before the run starts
        return fn(*args)
    finally:
        for proc in spinners:
            proc.kill()
            proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=600, help="generated training images")
    parser.add_argument("--run-images", type=int, default=960, help="train.total_images of each run")
    parser.add_argument("--busy", type=int, default=2, help="spin loops per core beside the loaded runs")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of the four runs")
    parser.add_argument("--workdir", help="keep the shards here (default: a temporary folder)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir or tmp)
        shard_dir = shards(workdir, args.images)
        n = cores()
        busy = args.busy * n
        print(f"{n} cores; loaded: {busy} busy processes beside the run ({args.busy} per core); "
              f"fair share = unloaded / {1 + args.busy}", flush=True)
        results: dict[str, list[float]] = {}
        for round_ in range(args.repeat):
            for threads, name in ((-1, "before (threads=-1)"), (0, "after (budget)")):
                runs = workdir / f"runs-{round_}-{threads}"
                alone = rate(shard_dir, runs / "alone", threads, args.run_images)
                busy_rate = loaded(busy, rate, shard_dir, runs / "loaded", threads, args.run_images)
                results.setdefault(name, []).append((alone, busy_rate))
                print(f"round {round_ + 1} {name}: unloaded {alone:.1f} img/s, loaded {busy_rate:.1f} img/s "
                      f"({busy_rate / alone * (1 + args.busy):.2f}x a fair share); load average now "
                      f"{os.getloadavg()[0]:.1f} (others' jobs on a shared machine count too)", flush=True)
        print("\n| run | unloaded img/s | loaded img/s | loaded / fair share |\n|---|---|---|---|")
        for name, pairs in results.items():
            alone, busy_rate = [p[0] for p in pairs], [p[1] for p in pairs]
            share = [b / a * (1 + args.busy) for a, b in pairs]
            print(f"| {name} | {spread(alone)} | {spread(busy_rate)} | {spread(share, '.2f', 'x')} |")
    return 0


def spread(values: list[float], fmt: str = ".1f", unit: str = "") -> str:
    """The median and, over several rounds, the range."""
    mid = f"{statistics.median(values):{fmt}}{unit}"
    return mid if len(values) == 1 else f"{mid} ({min(values):{fmt}}-{max(values):{fmt}})"


if __name__ == "__main__":
    sys.exit(main())
