"""Shared fixtures: real JPEGs written to disk and real shards built from them."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from data_tools.build import BuildConfig, build  # noqa: E402
from data_tools.synthetic import HASHTAGS, photo, write_corpus  # noqa: E402,F401  (re-exported for tests)
from launch.config import build as make_config  # noqa: E402


def kill9_after_checkpoints(cmd: list[str], run_dir: Path, count: int, **popen) -> list[Path]:
    """Run `cmd`, SIGKILL it as soon as `run_dir` holds `count` checkpoints (or after 240 s);
    the checkpoints left behind."""
    import signal
    import subprocess
    import time

    from pretrain import checkpoint
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
    import subprocess

    from pretrain import checkpoint
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


@pytest.fixture(scope="session")
def cub(tmp_path_factory) -> dict:
    """A tiny CUB-200-2011 (3 classes), converted by `wsl data convert`: single-label
    samples with `labels` and no `tags` (shared, read-only)."""
    from data_tools.convert import ConvertConfig, convert
    from test_convert import cub_tree
    root = tmp_path_factory.mktemp("cub")
    cub_tree(root / "CUB_200_2011", per_class=6)
    sets = {}
    for split in ("train", "test"):
        convert(make_config(ConvertConfig, [], ["dataset=cub", f"root={root}", f"output={root / split}",
                                                f"split={split}", "progress=false", "workers=1"]))
        sets[split] = root / split
    return sets


def build_shards(manifest: Path, out: Path, *overrides: str) -> dict:
    cfg = make_config(BuildConfig, [], [f"input.manifest={manifest}", f"output={out}", "progress=false",
                                        "workers=1", *overrides])
    return build(cfg)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """A JSONL manifest over 240 generated JPEGs (shared, read-only)."""
    return write_corpus(tmp_path_factory.mktemp("corpus"), 240)


@pytest.fixture(scope="session")
def shard_dir(tmp_path_factory, corpus) -> Path:
    """Shards built from `corpus`, 32 samples each (shared, read-only)."""
    out = tmp_path_factory.mktemp("shards")
    build_shards(corpus, out, "shards.samples=32")
    return out


@pytest.fixture
def read_only():
    """read_only(folder): make `folder` unwritable as a user meets it: a read-only bind mount
    as root (root ignores permission bits), permission bits otherwise; undone afterwards."""
    import os
    import subprocess
    mounted, chmodded = [], []

    def make(folder: Path) -> Path:
        if os.geteuid() != 0:
            folder.chmod(0o555)
            chmodded.append(folder)
            return folder
        for args in (["mount", "--bind", str(folder), str(folder)], ["mount", "-o", "remount,bind,ro", str(folder)]):
            if subprocess.run(args, capture_output=True).returncode != 0:
                if args[1] == "-o":
                    subprocess.run(["umount", str(folder)], check=True)
                pytest.skip("root without the right to mount: no way to make a folder read-only")
        mounted.append(folder)
        return folder

    yield make
    for folder in mounted:
        subprocess.run(["umount", str(folder)], check=True)
    for folder in chmodded:
        folder.chmod(0o755)
