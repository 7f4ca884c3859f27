"""Stopping on a signal: Ctrl-C, SIGTERM, and SLURM's SIGUSR1/SIGUSR2 before preemption.

While a loop runs inside `stop_signals()`, a signal only sets a flag; the loop reads it at
a step boundary, writes a checkpoint and raises `Interrupted`, so no signal ever leaves
half a step or half a checkpoint. `request_stop` sets the same flag from code (submitit's
checkpoint hook). No torch here: the `wsl` command imports this at start-up.
"""
from __future__ import annotations

import contextlib
import signal

from data_tools.common.signals import STOP_SIGNALS

_flag = {"signum": 0}


class Interrupted(RuntimeError):
    """The run stopped on a signal after writing its checkpoint; re-running resumes it."""

    def __init__(self, signum: int, images_seen: int):
        super().__init__(f"stopped by {signal.Signals(signum).name} at {images_seen} images; "
                         "the checkpoint is written, re-run the same command to resume")
        self.signum = signum
        self.images_seen = images_seen


class NonFiniteLoss(RuntimeError):
    """The run diverged: `train.max_bad_steps` steps in a row had a non-finite loss or
    gradient, each skipped. Here beside Interrupted so that `wsl` reports it in one line
    without importing torch."""

    def __init__(self, in_row: int, images_seen: int, last_good):
        where = f"the last good checkpoint is {last_good}" if last_good else "no checkpoint was written yet"
        super().__init__(f"diverged: {in_row} step(s) in a row had a non-finite loss or gradient, at "
                         f"{images_seen} images; {where}. Lower optim.lr_per_256 or raise "
                         "optim.warmup_images, then re-run (it resumes from the last checkpoint)")


def request_stop(signum: int = signal.SIGTERM) -> None:
    """Ask the running loop to checkpoint and stop, as the signal `signum` would."""
    _flag["signum"] = _flag["signum"] or int(signum)


def requested() -> int:
    """The first stop signal received (0: none)."""
    return _flag["signum"]


@contextlib.contextmanager
def stop_signals():
    """Signals set the stop flag while the block runs; before and after, they act as usual.
    A stop requested before the block (during a job's set-up) still counts; the flag is
    cleared when the block ends, so a later loop in the same process starts clean."""
    previous = {sig: signal.signal(sig, lambda signum, frame: request_stop(signum)) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _flag["signum"] = 0
