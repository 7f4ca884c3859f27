"""scripts/install-system-deps.sh as `make setup` runs it, beside another apt at work."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO

# apt takes fcntl locks (flock(1) does not block it): these are the ones an install and an
# update of the package lists wait on.
APT_LOCKS = ["/var/lib/dpkg/lock-frontend", "/var/lib/dpkg/lock", "/var/lib/apt/lists/lock"]
HOLD = """
import fcntl, sys, time
files = [open(path, "a") for path in sys.argv[2:]]
for f in files:
    fcntl.lockf(f, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(float(sys.argv[1]))
"""


def path_without(tmp_path: Path, hidden: str) -> str:
    """A PATH with every command of the usual one but `hidden`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for folder in ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"):
        for tool in Path(folder).iterdir() if Path(folder).is_dir() else []:
            if tool.name != hidden and not (bin_dir / tool.name).exists():
                (bin_dir / tool.name).symlink_to(tool)
    return str(bin_dir)


@pytest.mark.slow
def test_setup_waits_for_another_apt_and_says_what_it_installs(tmp_path):
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("installs Debian packages only as root on Debian")
    if not all(shutil.which(tool) for tool in ("chromium", "slurmctld", "slurmd", "sbatch", "munged")):
        pytest.skip("chromium, SLURM or munge is not installed: this test would download them")
    # chromium looks missing, so the script asks apt for it (installed already: nothing is
    # downloaded) while another process holds apt's locks for a few seconds.
    holder = subprocess.Popen([sys.executable, "-c", HOLD, "8", *APT_LOCKS], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        env = {**os.environ, "PATH": path_without(tmp_path, "chromium")}
        setup = subprocess.run(["bash", "scripts/install-system-deps.sh"], cwd=REPO, env=env, capture_output=True,
                               text=True, timeout=300)
    finally:
        holder.kill()
        holder.wait()
    assert setup.returncode == 0, setup.stderr
    assert "installing Debian packages:\n  chromium (tests: report.html opened headless)\n" in setup.stderr
    assert "waiting for another apt to finish (up to 600 s): held by process" in setup.stderr
