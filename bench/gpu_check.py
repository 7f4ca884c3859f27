"""Every GPU check in one call, for whoever is lent a GPU: `make gpu-check`.

Runs, in this order, each with its own time limit so the whole stays under 10 minutes:
  1. the GPU-marked tests (pytest -m gpu),
  2. DALI "mixed" (GPU) decode img/s against the CPU backends (bench/loader.py),
  3. ResNeXt-101 32x8d and 32x16d train img/s and MFU in bf16 + channels_last at 224 px
     (bench/train_step.py, engine against a bare loop),
  4. a 1-GPU NCCL DDP pretraining run under torchrun (the code path of a multi-node job),
then prints one table and writes it into docs/benchmarks.md (section "GPU check") and,
where $OUT is set, into $OUT/gpu-check.md. A check that fails is a FAIL row, not a stop.
"""
from __future__ import annotations

import datetime
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- gpu-check:begin -->", "<!-- gpu-check:end -->"


def sh(args: list[str], limit: int, **kwargs) -> tuple[int, str, float]:
    start = time.perf_counter()
    try:
        proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=limit, **kwargs)
        out, rc = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as err:
        out, rc = f"{err.stdout or ''}{err.stderr or ''}\ntimed out after {limit} s", 124
    print(out[-3000:], flush=True)
    return rc, out, time.perf_counter() - start


def gpu_tests() -> list[tuple[str, str, str]]:
    rc, out, took = sh([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider"], 240)
    summary = (re.findall(r"^=*\s*(\d+ passed.*?|\d+ failed.*?|no tests ran.*?)\s*=*$", out, re.M) or [f"rc {rc}"])[-1]
    return [("GPU-marked tests", summary, "PASS" if rc == 0 else "FAIL")]


def dali_decode() -> list[tuple[str, str, str]]:
    rc, out, _ = sh([sys.executable, "bench/loader.py", "--images", "600", "--repeat", "2", "--seconds", "6"], 200)
    rows = []
    for backend, device, rate in re.findall(r"^\s+(\S+)\s+on (\S+)\s*:\s+(\d+) img/s", out, re.M):
        rows.append((f"loader {backend} on {device}, 224 px train transforms", f"{rate} img/s", "PASS"))
    gpu = re.search(r"dali on the GPU: (\d+) img/s \(goal >= (\d+)\)", out)
    if gpu:
        rows.append(("DALI mixed decode vs goal", f"{gpu[1]} img/s (goal {gpu[2]})",
                     "PASS" if int(gpu[1]) >= int(gpu[2]) else "FAIL"))
    return rows or [("loader bench", f"rc {rc}", "FAIL")]


def train_speed() -> list[tuple[str, str, str]]:
    rows = []
    for model, batch in (("resnext101_32x8d", 128), ("resnext101_32x16d", 64)):
        rc, out, _ = sh([sys.executable, "bench/train_step.py", "--model", model, "--batch", str(batch),
                         "--size", "224", "--device", "cuda", "--steps", "30", "--warmup", "5", "--repeats", "1"], 150)
        speed = re.search(r"engine: ([\d.]+) img/s, ratio: ([\d.]+)", out)
        mfu = re.search(r"MFU: ([\d.]+%)", out)
        if rc or not speed:
            rows.append((f"{model} bf16 train, batch {batch}", f"rc {rc}", "FAIL"))
            continue
        rows.append((f"{model} bf16 + channels_last train, batch {batch}",
                     f"{float(speed[1]):.0f} img/s, MFU {mfu[1] if mfu else '?'}, engine/bare {speed[2]}", "PASS"))
    return rows


def nccl_run() -> list[tuple[str, str, str]]:
    sys.path.insert(0, str(REPO))
    from tests.conftest import build_shards, write_corpus
    with tempfile.TemporaryDirectory() as tmp:
        shards = Path(tmp) / "shards"
        build_shards(write_corpus(Path(tmp) / "raw", 256), shards, "shards.samples=64")
        rc, out, took = sh([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "1", "-m",
                            "launch.cli", "pretrain", "-c", "configs/pretrain/tiny.yaml", f"data.train={shards}",
                            f"run_dir={Path(tmp) / 'run'}", "device=cuda", "data.loader.backend=dali",
                            "train.total_images=2048", "train.bottleneck_seconds=1"], 200,
                           env={**os.environ, "TORCH_DISTRIBUTED_DEBUG": "INFO"})
        ok = rc == 0 and (Path(tmp) / "run" / "backbone.pt").is_file()
        return [("1-GPU NCCL DDP pretrain (torchrun, dali, bf16)", f"rc {rc}, {took:.0f} s", "PASS" if ok else "FAIL")]


def table(rows: list[tuple[str, str, str]], device: str) -> str:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [BEGIN, f"Measured {stamp} on {device} by `make gpu-check` (bench/gpu_check.py).", "",
             "| check | figure | result |", "|---|---|---|"]
    lines += [f"| {name} | {figure} | {result} |" for name, figure, result in rows]
    return "\n".join(lines + [END])


def write(text: str) -> None:
    doc = REPO / "docs" / "benchmarks.md"
    old = doc.read_text()
    if BEGIN in old:
        new = old[:old.index(BEGIN)] + text + old[old.index(END) + len(END):]
    else:
        new = old.rstrip() + "\n\n## GPU check — `make gpu-check`\n\n" + text + "\n"
    doc.write_text(new)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu-check.md").write_text(text + "\n")


def main() -> int:
    import torch
    if not torch.cuda.is_available():
        print("gpu-check: needs a CUDA device; none is visible here", file=sys.stderr)
        return 2
    device = torch.cuda.get_device_name(0)
    rows = []
    for check in (gpu_tests, dali_decode, train_speed, nccl_run):
        try:
            rows += check()
        except Exception as err:  # one broken check must not hide the others' figures
            rows.append((check.__name__, f"{type(err).__name__}: {err}"[:200], "FAIL"))
    text = table(rows, device)
    print(text)
    write(text)
    return 0 if all(r[2] == "PASS" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
