"""Shards read from a URL: a real S3-protocol server (moto's server mode) and a plain
http.server, each its own process on 127.0.0.1, started here. The stream must be the one
read from local disk, and the local cache must hold no more than the shards in use."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest
from helpers import free_port

from data_tools.loaders import LoaderConfig, make_loader

# Every test reads from a server process over a socket.
pytestmark = pytest.mark.slow
SMALL = dict(backend="pil", batch_size=16, image_size=32, resize_size=40, workers=1, shuffle_buffer=32)


def serve(args: list[str], port: int):
    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"server {args} did not start")
            time.sleep(0.1)


@pytest.fixture(scope="module")
def s3_url(shard_dir):
    s3fs = pytest.importorskip("s3fs")
    port = free_port()
    proc = serve(["-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], port)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
           "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        fs = s3fs.S3FileSystem(skip_instance_cache=True)
        fs.mkdir("shards")
        for path in shard_dir.iterdir():
            if path.is_file():
                fs.put_file(str(path), f"shards/set/{path.name}")
        try:
            yield "s3://shards/set"
        finally:
            proc.terminate()
            proc.wait(timeout=30)


@pytest.fixture(scope="module")
def http_url(shard_dir):
    port = free_port()
    proc = serve(["-m", "http.server", "--bind", "127.0.0.1", "--directory", str(shard_dir), str(port)], port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def keys(loader) -> list[str]:
    return [k for batch in loader for k in batch.keys]


def cached_shards(loader) -> int:
    return len(list(loader.catalog.directory.glob("*.tar")))


@pytest.mark.parametrize("which", ["s3", "http"])
def test_a_url_yields_the_stream_of_local_disk_through_a_bounded_cache(which, request, shard_dir, tmp_path):
    url = request.getfixturevalue(f"{which}_url")
    local = keys(make_loader(LoaderConfig(**SMALL), shard_dir))
    loader = make_loader(LoaderConfig(**SMALL, cache_dir=str(tmp_path), cache_gb=1e-6), url)
    cache = loader.catalog.directory
    assert cache.is_relative_to(tmp_path)
    held, seen = [], []
    for batch in loader:
        seen += batch.keys
        held.append(cached_shards(loader))
    assert seen == local
    total = len(list(shard_dir.glob("*.tar")))
    assert max(held) < total  # shards were evicted after use, not all kept
    assert cached_shards(loader) <= 2  # the end of the epoch: only what the next epoch opens with


def test_a_remote_loader_resumes_exactly(s3_url, tmp_path):
    cfg = LoaderConfig(**SMALL, cache_dir=str(tmp_path))
    full = keys(make_loader(cfg, s3_url))
    head = make_loader(cfg, s3_url)
    it = iter(head)
    taken = [k for _ in range(3) for k in next(it).keys]
    state = head.state_dict()
    it.close()
    tail = make_loader(cfg, s3_url)
    tail.load_state_dict(state)
    assert taken + keys(tail) == full


def test_a_missing_remote_set_is_one_clear_error(s3_url, tmp_path):
    with pytest.raises(FileNotFoundError, match="s3://shards/nothing has no manifest.json"):
        make_loader(LoaderConfig(**SMALL, cache_dir=str(tmp_path)), "s3://shards/nothing")


def test_a_remote_set_needs_a_positive_cache(s3_url):
    with pytest.raises(ValueError, match="cache_gb"):
        make_loader(LoaderConfig(**SMALL, cache_gb=0), s3_url)


@pytest.mark.timeout(360)
def test_wsl_pretrain_trains_and_evaluates_on_shards_at_a_url(s3_url, tmp_path):
    """The `wsl` command, not only the loader: its checks and the run read the manifest
    through the URL (they once read a local path and refused every URL)."""
    from helpers import PRETRAIN_TINY as TINY
    from helpers import REPO, child_env, cli
    run_dir = tmp_path / "run"
    proc = subprocess.run(cli("pretrain", f"data.train={s3_url}", f"data.val={s3_url}", f"run_dir={run_dir}", *TINY,
                              "train.total_images=64", "eval.max_images=32", f"data.loader.cache_dir={tmp_path}"),
                          cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    assert rows[-1]["images_seen"] >= 64 and any("val/mAP" in row for row in rows)


def test_class_names_of_a_set_at_a_url_are_those_on_disk(http_url, shard_dir):
    from finetune.evaluate import class_names
    assert class_names(http_url) == class_names(shard_dir)


def test_a_url_without_a_shard_set_is_one_clear_error(http_url):
    from data_tools.format import shards
    with pytest.raises(FileNotFoundError, match="has no manifest.json"):
        shards.read_manifest(f"{http_url}/nothing")
