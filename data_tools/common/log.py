"""The console line every stage prints: to stderr, flushed at once (a job's log is read
while it runs, and stdout is kept for tables), and from one rank only where a run has
several."""
from __future__ import annotations

import sys


def say(text: str, env=None) -> None:
    """Print `text`; with a DistEnv `env`, only on its main rank."""
    if env is None or env.is_main:
        # One write per line: ranks share a stderr, and print's separate write of the newline
        # let two ranks' lines run together.
        sys.stderr.write(f"{text}\n")
        sys.stderr.flush()
