"""Helpers the test modules share (about 470 lines: the one helper module issue 18 asks for,
in sections by subject): the CLI as a user runs it, the environment of child processes, kill
-9 runs, shards built in-process and read back, image files good and bad, dataset trees for
`wsl data convert`, tiny loader, pretraining and fine-tuning configs. Fixtures live in
conftest.py."""
from __future__ import annotations

import hashlib
import io
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from data_tools.build import BuildConfig, build  # noqa: E402
from data_tools.common.config import build as make_config  # noqa: E402
from data_tools.convert import ConvertConfig, convert  # noqa: E402
from data_tools.format import shards  # noqa: E402
from data_tools.format.verify import verify  # noqa: E402
from data_tools.loaders import LoaderConfig  # noqa: E402
from finetune.config import FinetuneConfig  # noqa: E402
from launch.fixtures.synthetic import HASHTAGS, photo, write_corpus  # noqa: E402,F401  (re-exported for tests)
from pretrain import checkpoint  # noqa: E402
from pretrain.backbone import export  # noqa: E402
from pretrain.config import PretrainConfig  # noqa: E402
from pretrain.models import build_model  # noqa: E402

CLI = [sys.executable, "-m", "launch.cli"]


def cli(*args: str) -> list[str]:
    """`wsl ARGS` as a command line."""
    return [*CLI, *args]


def run_cli(*args: str, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    """`wsl ARGS` run to its end from the repository root, its output captured as text."""
    return subprocess.run(cli(*args), cwd=REPO, capture_output=True, text=True, timeout=timeout, **kwargs)


def child_env() -> dict:
    """This environment for a child run: not a rank of ours, this checkout, one thread per
    process (two cores are shared by every process a test starts)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return env


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill9_after_checkpoints(cmd: list[str], run_dir: Path, count: int, **popen) -> list[Path]:
    """Run `cmd`, SIGKILL it as soon as `run_dir` holds `count` checkpoints (or after 240 s);
    the checkpoints left behind."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **popen)
    deadline = time.time() + 240
    while time.time() < deadline and len(checkpoint.list_checkpoints(run_dir)) < count and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return checkpoint.list_checkpoints(run_dir)


def straight_and_resumed(argv: list[str], tmp_path: Path, total: int, **popen) -> tuple[dict, dict]:
    """The final weights of `argv` (a training command) run straight through, and of the same
    run killed (-9) after two checkpoints and run again, which must say it resumed."""
    straight = subprocess.run([*argv, f"run_dir={tmp_path / 'straight'}"], capture_output=True, text=True,
                              timeout=300, **popen)
    assert straight.returncode == 0, straight.stderr[-3000:]
    run_dir = tmp_path / "killed"
    kept = kill9_after_checkpoints([*argv, f"run_dir={run_dir}"], run_dir, 2, **popen)
    assert kept and checkpoint.path_for(run_dir, total) not in kept, "the kill came too late to test resume"
    resumed = subprocess.run([*argv, f"run_dir={run_dir}"], capture_output=True, text=True, timeout=300, **popen)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr
    return (checkpoint.load(checkpoint.path_for(tmp_path / "straight", total))["model"],
            checkpoint.load(checkpoint.path_for(run_dir, total))["model"])


def build_shards(manifest: Path, out: Path, *overrides: str) -> dict:
    cfg = make_config(BuildConfig, [], [f"input.manifest={manifest}", f"output={out}", "progress=false",
                                        "workers=1", *overrides])
    return build(cfg)


def run_as_users_do(argv: list[str], tmp_path: Path, env: dict, **popen):
    """`argv` (a `wsl` command) as a user without a W&B key runs it: W&B on (offline), a
    home folder of its own that W&B must leave alone, and, where strace is installed, no
    connection to any address off the machine."""
    import shutil
    import subprocess
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in env.items() if not k.startswith(("WANDB_", "XDG_"))}
    env["HOME"] = str(home)
    trace = tmp_path / "connections.txt"
    strace = ["strace", "-f", "-qq", "-e", "trace=connect", "-o", str(trace)] if shutil.which("strace") else []
    proc = subprocess.run([*strace, *argv], capture_output=True, text=True, timeout=300, env=env, **popen)
    assert proc.returncode == 0, proc.stderr[-3000:]
    outside = [p for p in home.rglob("*") if "wandb" in p.name]   # matplotlib's font cache may go there
    assert not outside, f"W&B wrote outside the run: {outside}"
    if strace:
        network = [line for line in trace.read_text().splitlines() if "AF_INET" in line]
        assert not network, f"tried the network: {network[:3]}"
    return proc


# -- image files, good and bad, as bytes --------------------------------------------------

ORIENTATION = 0x0112


def encode(im: Image.Image, fmt: str = "JPEG", **params) -> bytes:
    out = io.BytesIO()
    im.save(out, format=fmt, **params)
    return out.getvalue()


def picture(seed: int = 0, size: tuple[int, int] = (64, 48)) -> Image.Image:
    return photo(np.random.default_rng(seed), *size)


def good_jpeg(seed: int = 0, size: tuple[int, int] = (64, 48)) -> bytes:
    return encode(picture(seed, size), quality=90)


def truncated_jpeg() -> bytes:
    data = good_jpeg(1)
    return data[: len(data) // 2]


def text_file() -> bytes:
    return b"<html>404 not found</html>\nthis is not an image\n"


def png_bytes() -> bytes:
    return encode(picture(2), "PNG")


def webp_bytes() -> bytes:
    return encode(picture(3), "WEBP", quality=90)


def cmyk_source() -> Image.Image:
    return picture(4)


def cmyk_jpeg() -> bytes:
    return encode(cmyk_source().convert("CMYK"), quality=95)


def gray_jpeg() -> bytes:
    return encode(picture(5).convert("L"), quality=90)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png16(arr: np.ndarray) -> bytes:
    """A 16-bit PNG (grey for HxW, RGB for HxWx3), written by hand: no encoder in between."""
    height, width = arr.shape[:2]
    color = 0 if arr.ndim == 2 else 2
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in arr)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, color, 0, 0, 0))
            + png_chunk(b"IDAT", zlib.compress(rows)) + png_chunk(b"IEND", b""))


def gray16_source() -> np.ndarray:
    y, x = np.mgrid[0:40, 0:60]
    return (20000 + 300 * x + 200 * y).astype(np.uint16)  # 20000..40100: every 8-bit clip is 255


def corrupt_png() -> bytes:
    """A PNG whose compressed pixels are garbage (chunk CRC fixed, so only zlib notices)."""
    data = bytearray(encode(picture(8), "PNG"))
    start = data.index(b"IDAT")
    length = struct.unpack(">I", data[start - 4: start])[0]
    for i in range(start + 14, start + 64):
        data[i] ^= 0x55
    data[start + 4 + length: start + 8 + length] = struct.pack(">I", zlib.crc32(bytes(data[start: start + 4 + length])))
    return bytes(data)


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose IHDR claims width x height (CRC fixed): only the header is read."""
    data = bytearray(encode(Image.new("RGB", (8, 8), (10, 200, 30)), "PNG"))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def quadrants(width: int = 64, height: int = 32) -> Image.Image:
    """Four flat colours: any rotation or mirror changes the picture."""
    arr = np.zeros((height, width, 3), np.uint8)
    arr[: height // 2, : width // 2] = (230, 30, 30)
    arr[: height // 2, width // 2:] = (30, 230, 30)
    arr[height // 2:, : width // 2] = (30, 30, 230)
    arr[height // 2:, width // 2:] = (240, 240, 40)
    return Image.fromarray(arr, "RGB")


def exif_rotated_jpeg(orientation: int = 6) -> bytes:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    return encode(quadrants(), quality=95, exif=exif.tobytes())


def rgba_png() -> bytes:
    arr = np.zeros((20, 30, 4), np.uint8)
    arr[..., 0] = 255           # red, but fully transparent
    arr[:, 15:, 3] = 255        # right half opaque red
    return encode(Image.fromarray(arr, "RGBA"), "PNG")


def palette_png() -> bytes:
    return encode(picture(6).convert("P", palette=Image.Palette.ADAPTIVE, colors=32), "PNG")


def decode(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    assert im.format == "JPEG"
    im.load()
    return im


def mean_abs_diff(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).mean())


# -- dataset trees in their distributed layouts, for `wsl data convert` ----------------------

# tench, goldfish, great white shark: sorted-wnid order is label order.
WNIDS = ["n01440764", "n01443537", "n01484850"]


VAL_LABELS = ["n01484850", "n01440764", "n01443537", "n01440764", "n01484850", "n01443537", "n01443537"]


def save_jpeg(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    photo(np.random.default_rng(seed), 40, 32).save(path, quality=85)


def write_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))
    return path


def run_convert(dataset: str, root: Path, out: Path, *overrides: str) -> dict:
    cfg = make_config(ConvertConfig, [], [f"dataset={dataset}", f"root={root}", f"output={out}", "progress=false",
                                          "workers=1", "shards.samples=4", *overrides])
    return convert(cfg)


def samples(out: Path) -> list[dict]:
    """Every sample's json, over all shards."""
    return [json.loads(files["json"]) for tar in sorted(out.glob("*.tar"))
            for _, files in shards.iter_samples(tar)]


def labels_by_path(out: Path) -> dict[str, int]:
    found = {}
    for meta in samples(out):
        assert len(meta["labels"]) == 1
        found[meta["path"]] = meta["labels"][0]
    return found


def assert_verifies(out: Path) -> None:
    assert verify(str(out), workers=1, progress=False) == []


def imagenet_train(root: Path, base: str = "train") -> dict[str, str]:
    """3 classes x 3 images; returns relative path -> wnid."""
    truth = {}
    for c, wnid in enumerate(WNIDS):
        for k in range(3):
            rel = f"{base}/{wnid}/{wnid}_{100 + k}.JPEG"
            save_jpeg(root / rel, seed=10 * c + k)
            truth[rel] = wnid
    return truth


def imagenet_flat_val(root: Path, base: str = "val") -> dict[str, str]:
    truth = {}
    for k, wnid in enumerate(VAL_LABELS, 1):
        rel = f"{base}/ILSVRC2012_val_{k:08d}.JPEG"
        save_jpeg(root / rel, seed=100 + k)
        truth[rel] = wnid
    return truth


def write_solution(root: Path, labels: list[str] = VAL_LABELS) -> Path:
    rows = [f"ILSVRC2012_val_{k:08d},{wnid} 1 2 30 20 {wnid} 3 4 20 10" for k, wnid in enumerate(labels, 1)]
    random.Random(0).shuffle(rows)  # the distributed file is not in image order
    return write_lines(root / "LOC_val_solution.csv", ["ImageId,PredictionString", *rows])


CUB_CLASSES = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]


def cub_tree(root: Path, per_class: int = 3) -> list[dict]:
    """CUB_200_2011 with 1-based ids; returns one row per image (id, path, class index, train, bbox)."""
    rows = []
    for c, name in enumerate(CUB_CLASSES):
        for k in range(per_class):
            image_id = len(rows) + 1
            path = f"{name}/{name.split('.')[1]}_{k:04d}_{image_id}.jpg"
            save_jpeg(root / "images" / path, seed=image_id)
            rows.append({"id": image_id, "path": path, "label": c, "train": int(k != 0),
                         "bbox": [float(image_id), 2.0, 20.0 + c, 10.5]})
    write_lines(root / "classes.txt", [f"{i} {name}" for i, name in enumerate(CUB_CLASSES, 1)])
    write_lines(root / "images.txt", [f"{r['id']} {r['path']}" for r in rows])
    write_lines(root / "image_class_labels.txt", [f"{r['id']} {r['label'] + 1}" for r in rows])
    write_lines(root / "train_test_split.txt", [f"{r['id']} {r['train']}" for r in rows])
    write_lines(root / "bounding_boxes.txt", [f"{r['id']} " + " ".join(map(str, r["bbox"])) for r in rows])
    return rows


PLACES = ["/a/airfield", "/b/bus_station/indoor", "/b/bus_station/outdoor"]


def places_tree(root: Path, image_dir: str = "data_256_standard") -> tuple[dict, dict]:
    write_lines(root / "categories_places365.txt", [f"{name} {i}" for i, name in enumerate(PLACES)])
    train, val = {}, {}
    for c, name in enumerate(PLACES):
        for k in range(1, 3):
            rel = f"{name}/{k:08d}.jpg"
            save_jpeg(root / image_dir / rel.lstrip("/"), seed=10 * c + k)
            train[f"{image_dir}{rel}"] = c
    for k, c in enumerate([2, 0, 1, 1, 2], 1):
        save_jpeg(root / "val_256" / f"Places365_val_{k:08d}.jpg", seed=50 + k)
        val[f"val_256/Places365_val_{k:08d}.jpg"] = c
    write_lines(root / "places365_train_standard.txt",
                [f"{rel[len(image_dir):]} {c}" for rel, c in train.items()])
    write_lines(root / "places365_val.txt", [f"{Path(rel).name} {c}" for rel, c in val.items()])
    return train, val


def replace_line(path: Path, number: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[number - 1] = text
    write_lines(path, lines)


# -- reading back what a build wrote ------------------------------------------------------

def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_samples(out: Path) -> list[tuple[str, str, dict[str, bytes]]]:
    """(shard file, key, {ext: bytes}) for every sample of every shard, in order."""
    found = []
    for tar in sorted(out.glob("*.tar")):
        found += [(tar.name, key, files) for key, files in shards.iter_samples(tar)]
    return found


def manifest_rows(manifest: Path) -> list[dict]:
    return [json.loads(line) for line in manifest.read_text().splitlines()]


# -- loaders --------------------------------------------------------------------------------

SMALL = dict(batch_size=16, image_size=32, resize_size=40, workers=1)


def loader_config(backend: str = "pil", **overrides) -> LoaderConfig:
    """A small loader config (32 px crops, batches of 16, one worker) for `backend`."""
    return LoaderConfig(backend=backend, **{**SMALL, **overrides})


# -- `wsl launch` ---------------------------------------------------------------------------

def wsl_launch(cwd: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = env or {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("WANDB_API_KEY", None)
    return subprocess.run(cli("launch", *args), cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def build_args(raw: Path, out: Path) -> list[str]:
    return ["data", "build", "--", f"input.manifest={raw}", f"output={out}", "shards.samples=8", "workers=1",
            "progress=false"]


# -- pretraining ----------------------------------------------------------------------------

# A tiny ResNeXt on 32 px crops, W&B off: a pretraining run of seconds on the CPU.
PRETRAIN_TINY = ["device=cpu", "model.name=resnext_tiny", "log.wandb=off", "train.bottleneck_seconds=0",
        "data.loader.batch_size=8", "data.loader.image_size=32", "data.loader.resize_size=36",
        "data.loader.workers=1", "data.loader.backend=pil", "optim.warmup_images=32",
        "optim.schedule=cosine", "log.every_steps=1", "checkpoint.keep=100"]


def pretrain_config(shard_dir: Path, run_dir: Path, *overrides: str) -> PretrainConfig:
    return make_config(PretrainConfig, [], [f"data.train={shard_dir}", f"run_dir={run_dir}", *PRETRAIN_TINY,
                                            *overrides])


# Six classes, so top-5 is not trivially 100 %.
COLOURS = {"black": (20, 20, 20), "blue": (30, 60, 200), "green": (40, 180, 60), "red": (210, 40, 40),
           "white": (235, 235, 235), "yellow": (220, 210, 40)}


FINETUNE_TINY = ["device=cpu", "log.wandb=off", "train.bottleneck_seconds=0", "data.loader.batch_size=8",
        "data.loader.image_size=32", "data.loader.resize_size=36", "data.loader.workers=1",
        "data.loader.backend=pil", "optim.warmup_images=16", "optim.schedule=cosine", "log.every_steps=1",
        "checkpoint.keep=100", "optim.weight_decay=0"]


def colour_folder(root: Path, per_class: int, seed: int) -> Path:
    """root/CLASS/*.jpg: each class its own colour, with noise and a random disc per image."""
    rng = np.random.default_rng(seed)
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            arr = np.clip(np.array(colour) + rng.normal(0, 25, (40, 48, 3)), 0, 255)
            cx, cy = rng.integers(0, 48), rng.integers(0, 40)
            y, x = np.mgrid[0:40, 0:48]
            arr[(x - cx) ** 2 + (y - cy) ** 2 < 64] = rng.uniform(0, 255, 3)
            Image.fromarray(arr.astype(np.uint8)).save(root / name / f"{i}.jpg", quality=90)
    return root


def imagefolder_shards(folder: Path, out: Path) -> Path:
    """`wsl data build -c configs/data/imagenet.yaml input.imagefolder=...`, in process."""
    cfg = make_config(BuildConfig, [str(REPO / "configs/data/imagenet.yaml")],
                      [f"input.imagefolder={folder}", f"output={out}", "progress=false", "workers=1",
                       "shards.samples=16"])
    build(cfg)
    return out


def pretrained(path: Path, pretrain_shards: Path | None, seed: int = 0) -> Path:
    """A backbone.pt as `wsl pretrain` exports it, naming `pretrain_shards` as its data."""
    torch.manual_seed(seed)
    model = build_model("resnext_tiny", 5)
    return export(model.state_dict(), "resnext_tiny", {"data": {"train": str(pretrain_shards)}}, path)


def finetune_config(data, backbone_path, run_dir, *overrides) -> FinetuneConfig:
    return make_config(FinetuneConfig, [], [f"backbone={backbone_path}", f"data.train={data['train']}",
                                            f"run_dir={run_dir}", *FINETUNE_TINY, *overrides])


def separable(n_per_class: int, classes: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Clusters around orthogonal-ish centres, far apart next to their spread."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (classes, dim)) * 4
    y = np.repeat(np.arange(classes), n_per_class)
    return (centres[y] + rng.normal(0, 0.5, (len(y), dim))).astype(np.float32), y
