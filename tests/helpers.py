"""Helpers the test modules share: the CLI as a user runs it, the environment of child
processes, kill -9 runs, and shards built in-process. Fixtures live in conftest.py."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from data_tools.build import BuildConfig, build  # noqa: E402
from data_tools.common.config import build as make_config  # noqa: E402
from launch.fixtures.synthetic import HASHTAGS, photo, write_corpus  # noqa: E402,F401  (re-exported for tests)
from pretrain import checkpoint  # noqa: E402

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
