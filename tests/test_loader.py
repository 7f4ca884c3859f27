"""data_tools/loaders/loader.py: every backend on real (generated) shards, one contract. (360
lines: the contract, its fixtures and every backend belong together.)

Small images (32 px crops) and small batches keep the whole file to well under a minute
on two cores. GPU tests run where CUDA is (the lent machine) and are skipped elsewhere.
"""
from __future__ import annotations

import io
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from helpers import build_shards
from helpers import loader_config as config
from PIL import Image
from torchvision.transforms import v2

from data_tools.build import BuildConfig, build
from data_tools.common.config import build as make_config
from data_tools.format import resampling, shards
from data_tools.loaders import Loader, dali_available, make_loader

CPU_BACKENDS = ["pil", pytest.param("dali-cpu", marks=pytest.mark.skipif(not dali_available(), reason="no DALI"))]


MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)


STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (runs on the lent GPU machine)")


def epoch(loader: Loader) -> list:
    return list(loader)


def keys_of(batches: list) -> list[str]:
    return [k for b in batches for k in b.keys]


def samples(directory: Path) -> dict[str, dict]:
    """key -> {"jpg": bytes, "meta": json} straight from the tars."""
    out = {}
    for entry in shards.read_manifest(directory)["shards"]:
        for key, files in shards.iter_samples(directory / entry["file"]):
            out[key] = {"jpg": files.get("jpg"), "meta": json.loads(files["json"]) if "json" in files else None}
    return out


@pytest.fixture(scope="module")
def truth(shard_dir) -> dict[str, dict]:
    return samples(shard_dir)


@pytest.fixture(scope="module")
def imagefolder_dir(tmp_path_factory) -> Path:
    """Single-label shards from an ImageFolder tree of 3 classes x 8 images."""
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for c, name in enumerate(["ant", "bee", "cow"]):
        (root / "in" / name).mkdir(parents=True)
        for i in range(8):
            Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(root / "in" / name / f"{i}.jpg")
    build(make_config(BuildConfig, [], [f"input.imagefolder={root / 'in'}", f"output={root / 'out'}",
                                        "progress=false", "workers=1", "shards.samples=10"]))
    return root / "out"


@pytest.fixture(scope="module")
def uneven_dir(tmp_path_factory, corpus) -> Path:
    """The corpus in shards of 70: three full shards and a short one."""
    out = tmp_path_factory.mktemp("uneven")
    build_shards(corpus, out, "shards.samples=70")
    return out


BAD = {"900000000001": "decode_error", "900000000002": "decode_error",
       "900000000003": "missing_json", "900000000004": "no_labels"}


def add_shard(out: Path, samples: list[dict], keep_others: bool = True) -> None:
    """A shard of `samples` (webdataset dicts) added to the set in `out` (or, without
    `keep_others`, the set's only shard), indexed as `wsl data index` would."""
    tar = out / "train-000099.tar"
    with wds.TarWriter(str(tar)) as sink:
        for sample in samples:
            sink.write(sample)
    shards.write_dali_index(tar, out / "train-000099.idx")
    manifest = shards.read_manifest(out)
    entry = {"shard": 99, "file": tar.name, "index": "train-000099.idx", "samples": len(samples),
             "bytes": tar.stat().st_size, "sha256": shards.file_sha256(tar)}
    if not keep_others:
        for old in manifest["shards"]:
            for path in out.glob(Path(old["file"]).stem + ".*"):
                path.unlink()
        manifest["shards"], manifest["num_samples"] = [], 0
    manifest["shards"].append(entry)
    manifest["num_samples"] += len(samples)
    shards.write_json(out / "manifest.json", manifest)
    shards.index_tables(out, progress=False)  # the new shard's table,
    resampling.fit(out, progress=False)  # then the resampling fit over all shards


def copy_of(shard_dir: Path, out: Path) -> Path:
    for path in shard_dir.iterdir():
        if path.is_file():
            shutil.copy(path, out)
    return out


@pytest.fixture(scope="module")
def broken_dir(tmp_path_factory, shard_dir, truth) -> Path:
    """shard_dir plus one shard holding 6 good samples and 4 bad ones (see BAD)."""
    out = copy_of(shard_dir, tmp_path_factory.mktemp("broken"))
    good = list(truth.items())[:6]
    jpg, meta = good[0][1]["jpg"], good[0][1]["meta"]
    add_shard(out, [*({"__key__": f"90000000010{i}", "jpg": s["jpg"], "json": s["meta"]} for i, (_, s) in enumerate(good)),
                    {"__key__": "900000000001", "jpg": jpg[:200], "json": meta},  # header cut
                    {"__key__": "900000000002", "jpg": b"not a jpeg at all", "json": meta},
                    {"__key__": "900000000003", "jpg": jpg},
                    {"__key__": "900000000004", "jpg": jpg, "json": {"labels": [], "tags": []}}])
    return out


@pytest.fixture(scope="module")
def damaged_first_dir(tmp_path_factory, shard_dir, truth) -> Path:
    """One shard: three damaged JPEGs first (zeroed, markers overwritten, cut at the end),
    then good ones, one of them with bytes after its end marker, as some writers leave, and
    two with bad Huffman tables. DALI's CPU decoder crashed the process (segfault) on the
    first two in a large batch; the last two it reports, and then also failed the sound
    batch it had prefetched."""
    out = copy_of(shard_dir, tmp_path_factory.mktemp("damaged"))
    good = list(truth.values())[:70]
    jpg, meta = good[0]["jpg"], good[0]["meta"]
    damaged = [bytes(len(jpg)), jpg[:20] + bytes(b ^ 0xA5 for b in jpg[20:-20]) + jpg[-20:], jpg[:-100]]
    samples = [{"__key__": f"80000000000{i}", "jpg": data, "json": meta} for i, data in enumerate(damaged)]
    samples += [{"__key__": f"8000000001{i:02d}", "jpg": s["jpg"] + (b"\r\n" if i == 5 else b""), "json": s["meta"]}
                for i, s in enumerate(good)]
    for at in (12, 40):  # Huffman tables overwritten, framing whole: DALI raises, for two batches
        dht = jpg.index(b"\xff\xc4") + 4
        samples[at]["jpg"] = jpg[:dht] + b"\xff" * (int.from_bytes(jpg[dht - 2:dht], "big") - 2) + jpg[dht - 2 + int.from_bytes(jpg[dht - 2:dht], "big"):]
    add_shard(out, samples, keep_others=False)
    return out


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_train_batches_have_the_contracted_shapes_and_khot_targets(backend, shard_dir, truth):
    loader = make_loader(config(backend), shard_dir)
    planned = len(loader.order()) // 16  # before the epoch: after it, order() is the next epoch's
    batches = epoch(loader)
    assert len(batches) == planned
    manifest = shards.read_manifest(shard_dir)
    for images, targets in batches:
        assert images.shape == (16, 3, 32, 32) and images.dtype == torch.float32
        assert images.is_contiguous(memory_format=torch.channels_last)
        pixels = images * STD + MEAN
        assert pixels.min() >= -1e-4 and pixels.max() <= 1 + 1e-4 and pixels.std() > 0.05
        assert targets.shape == (16, manifest["num_classes"]) and targets.dtype == torch.float32
    for batch in batches:
        for key, row in zip(batch.keys, batch[1]):
            assert torch.nonzero(row).flatten().tolist() == sorted(truth[key]["meta"]["labels"])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_eval_images_match_resize_centre_crop_normalise(backend, shard_dir, truth):
    reference = v2.Compose([v2.PILToTensor(), v2.Resize(40, antialias=True), v2.CenterCrop(32),
                            v2.ToDtype(torch.float32, scale=True),
                            v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    batch = next(iter(make_loader(config(backend), shard_dir, phase="eval")))
    expected = torch.stack([reference(Image.open(io.BytesIO(truth[k]["jpg"])).convert("RGB")) for k in batch.keys])
    assert (batch[0] - expected).abs().mean() < 0.15       # interpolation differences only
    assert (batch[0] - expected.flip(-1)).abs().mean() > 0.5  # a flip or a channel swap would show


def test_single_label_data_gives_int64_labels_and_no_resampling(imagefolder_dir):
    truth = samples(imagefolder_dir)
    loader = make_loader(config(batch_size=4), imagefolder_dir)
    batches = epoch(loader)
    keys = keys_of(batches)
    assert len(keys) == len(set(keys)) == 24
    for batch in batches:
        assert batch[1].dtype == torch.int64
        assert batch[1].tolist() == [truth[k]["meta"]["labels"][0] for k in batch.keys]


def test_hashtag_data_is_sqrt_resampled_by_default(shard_dir):
    keys = keys_of(epoch(make_loader(config(drop_last=False), shard_dir)))
    counts = Counter(keys)
    assert max(counts.values()) > 1  # rare tags repeated
    assert len(counts) < len(samples(shard_dir))  # frequent ones sometimes skipped
    plain = keys_of(epoch(make_loader(config(drop_last=False, sqrt_resample=False), shard_dir)))
    assert len(plain) == len(set(plain))


def test_every_backend_yields_the_same_samples(shard_dir):
    backends = ["pil", "dali-cpu"] if dali_available() else ["pil"]
    evals = [Counter(keys_of(epoch(make_loader(config(b), shard_dir, phase="eval")))) for b in backends]
    assert all(e == evals[0] for e in evals) and set(evals[0]) == set(samples(shard_dir))
    trains = [keys_of(epoch(make_loader(config(b), shard_dir))) for b in backends]
    assert all(Counter(t) == Counter(trains[0]) for t in trains)


def test_pil_output_does_not_depend_on_the_worker_count(shard_dir):
    one = epoch(make_loader(config(workers=1), shard_dir))
    two = epoch(make_loader(config(workers=2), shard_dir))
    assert keys_of(one) == keys_of(two)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(one, two))


def test_ranks_read_disjoint_samples_from_contiguous_shards(shard_dir):
    world = 3
    loaders = [make_loader(config(sqrt_resample=False), shard_dir, rank=r, world_size=world) for r in range(world)]
    keys = [keys_of(epoch(lo)) for lo in loaders]
    assert len({len(k) for k in keys}) == 1
    assert sum(len(set(k)) for k in keys) == len(set().union(*map(set, keys)))
    catalog = loaders[0].catalog
    row_of = {catalog.key(row): row for row in range(len(catalog))}
    shard_of = {r: {catalog.shard_of(row_of[k]) for k in keys[r]} for r in range(world)}
    for a in range(world):
        for b in range(a + 1, world):
            assert len(shard_of[a] & shard_of[b]) <= 1


@pytest.mark.parametrize("phase", ["train", "eval"])
@pytest.mark.parametrize("world", [2, 3, 5])
def test_every_rank_yields_the_same_number_of_batches_with_uneven_shards(uneven_dir, phase, world):
    sizes = [s["samples"] for s in shards.read_manifest(uneven_dir)["shards"]]
    assert len(set(sizes)) > 1
    loaders = [make_loader(config(), uneven_dir, rank=r, world_size=world, phase=phase) for r in range(world)]
    counts = [len(lo) for lo in loaders]
    assert len(set(counts)) == 1
    assert [len(epoch(lo)) for lo in loaders[:2]] == counts[:2]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_resume_on_the_same_world_size_continues_exactly(backend, shard_dir):
    full = make_loader(config(backend), shard_dir)
    first, second = keys_of(epoch(full)), keys_of(epoch(full))

    head = make_loader(config(backend), shard_dir)
    it = iter(head)
    taken = [next(it) for _ in range(3)]
    state = head.state_dict()
    it.close()
    tail = make_loader(config(backend), shard_dir)
    tail.load_state_dict(state)
    tail.set_epoch(0)  # the trainer's loop calls this; inside the resumed epoch it keeps the position
    assert keys_of(taken) + keys_of(epoch(tail)) == first
    assert tail.epoch == 1 and keys_of(epoch(tail)) == second


def test_resume_on_another_world_size_yields_the_samples_not_yet_consumed(shard_dir):
    cfg = config(drop_last=False, sqrt_resample=False)
    old = [make_loader(cfg, shard_dir, rank=r, world_size=2) for r in range(2)]
    consumed, states = [], []
    for lo in old:
        it = iter(lo)
        consumed += keys_of([next(it) for _ in range(2)])
        states.append(lo.state_dict())
        it.close()
    assert states[0] == states[1]  # every rank stopped at the same place
    new = [make_loader(cfg, shard_dir, rank=r, world_size=3) for r in range(3)]
    resumed = []
    for lo in new:
        lo.load_state_dict(states[0])
        resumed += keys_of(epoch(lo))
    everything = [old[0].catalog.key(r) for r in old[0].plan.slice(old[0].plan.stream(0), 1, 0, 0, 0).rows()]
    assert not set(consumed) & set(resumed) and len(resumed) == len(set(resumed))
    assert set(consumed) | set(resumed) <= set(everything)
    assert len(everything) - len(consumed) - len(resumed) < 2 + 3  # the two cuts' remainders


def test_state_at_the_end_of_an_epoch_points_at_the_next(shard_dir):
    loader = make_loader(config(), shard_dir)
    batches = iter(loader)
    for _ in range(len(loader)):
        next(batches)
    assert loader.state_dict()["epoch"] == 1 and loader.state_dict()["consumed"] == 0
    with pytest.raises(ValueError, match="samples"):
        make_loader(config(), shard_dir).load_state_dict({**loader.state_dict(), "num_samples": 3})


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_bad_samples_are_skipped_and_counted(backend, broken_dir):
    loader = make_loader(config(backend, sqrt_resample=False, drop_last=False), broken_dir, phase="eval")
    planned = len(loader)
    batches = epoch(loader)
    keys = keys_of(batches)
    assert len(batches) == planned
    assert not set(keys) & set(BAD)
    assert {f"90000000010{i}" for i in range(6)} <= set(keys)
    assert loader.bad_samples == Counter(BAD.values())
    assert loader.catalog_bad == 2 and loader.decode_failures == 2  # table-marked, and met while decoding
    assert all(len(b[0]) == len(b.keys) == len(b[1]) == len(b.rows) for b in batches)


@pytest.mark.parametrize("phase", ["eval", "train"])
def test_damaged_jpegs_first_in_a_large_batch_are_skipped_by_every_backend(damaged_first_dir, phase):
    keys = {}
    for backend in ["pil", "dali-cpu"] if dali_available() else ["pil"]:
        loader = make_loader(config(backend, batch_size=64, sqrt_resample=False, drop_last=False, workers=2),
                             damaged_first_dir, phase=phase)
        keys[backend] = keys_of(epoch(loader))
        assert loader.decode_failures == 5 and not set(keys[backend]) & {f"80000000000{i}" for i in range(3)}
        assert "800000000105" in keys[backend]  # padded after its end marker: still an image
    assert len(set(map(tuple, keys.values()))) == 1


def test_bad_config_is_refused_naming_the_key(shard_dir):
    with pytest.raises(ValueError, match="batch_size"):
        make_loader(config(batch_size=0), shard_dir)
    with pytest.raises(ValueError, match="backend"):
        make_loader(config("ffcv"), shard_dir)
    with pytest.raises(ValueError, match="phase"):
        make_loader(config(), shard_dir, phase="test")
    with pytest.raises(ValueError, match="GPU"):
        make_loader(config("dali"), shard_dir)
    with pytest.raises(ValueError, match="no batch"):
        make_loader(config(batch_size=4096), shard_dir)


@gpu
@pytest.mark.gpu
@pytest.mark.skipif(not dali_available(), reason="no DALI")
@pytest.mark.parametrize("phase", ["train", "eval"])
def test_dali_on_gpu_keeps_the_contract(shard_dir, truth, phase):
    loader = make_loader(config("dali"), shard_dir, device="cuda", phase=phase)
    batches = epoch(loader)
    images, targets = batches[0]
    assert images.is_cuda and images.dtype == torch.float32 and images.shape[1:] == (3, 32, 32)
    assert images.is_contiguous(memory_format=torch.channels_last)
    assert targets.is_cuda and targets.shape == (len(images), loader.catalog.num_classes)
    for batch in batches:
        for key, row in zip(batch.keys, batch[1].cpu()):
            assert torch.nonzero(row).flatten().tolist() == sorted(truth[key]["meta"]["labels"])
    cpu = keys_of(epoch(make_loader(config(), shard_dir, phase=phase)))
    assert Counter(keys_of(batches)) == Counter(cpu)


@gpu
@pytest.mark.gpu
@pytest.mark.skipif(not dali_available(), reason="no DALI")
def test_dali_on_gpu_survives_and_counts_bad_samples(broken_dir):
    loader = make_loader(config("dali", drop_last=False), broken_dir, device="cuda", phase="eval")
    keys = keys_of(epoch(loader))
    assert not set(keys) & set(BAD) and loader.bad_samples == Counter(BAD.values())


@gpu
@pytest.mark.gpu
def test_pil_on_gpu_gives_channels_last_cuda_batches(shard_dir):
    images, targets = next(iter(make_loader(config(), shard_dir, device="cuda")))
    assert images.is_cuda and targets.is_cuda and images.is_contiguous(memory_format=torch.channels_last)
