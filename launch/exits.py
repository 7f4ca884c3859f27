"""How every `wsl` command ends: a user's mistake as one line and status 2, a stop signal
as its own status, anything else as the traceback a bug report needs (WSL_DEBUG=1: always)."""
from __future__ import annotations

import os
import signal
import sys
import time
from concurrent.futures.process import BrokenProcessPool

from data_tools.common import writable
from data_tools.common.config import ConfigError
from data_tools.common.log import say
from pretrain.stop import Interrupted, NonFiniteLoss

USER_ERRORS = (ConfigError, FileNotFoundError, NotADirectoryError, PermissionError, ValueError)


def user_errors() -> tuple:
    """USER_ERRORS, and W&B's UsageError (log.wandb=online without an API key) once W&B is loaded."""
    wandb = sys.modules.get("wandb")
    return USER_ERRORS + ((wandb.errors.UsageError,) if wandb is not None else ())


def describe(err: Exception) -> str:
    if type(err).__module__.startswith("wandb"):
        return f"W&B: {err} (log.wandb=offline logs without an account)"
    return str(err)


class Terminated(Exception):
    """SIGTERM outside a training loop (which checkpoints on it instead)."""


def terminated(signum, frame):
    raise Terminated()


def status(handler, args) -> int:
    """`handler(args)`'s exit status, its errors and stop signals said in one line."""
    # Redirected, stdout is block-buffered and stderr (progress bars, warnings) is not: a
    # log would show a stage's results after its later messages, or under the next stage.
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)
    # Only where nothing else handles SIGTERM (submitit's job process does, for requeues).
    previous = signal.getsignal(signal.SIGTERM)
    if previous == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, terminated)
    try:
        return through_stop(handler, args)
    except user_errors() as err:
        if os.environ.get("WSL_DEBUG"):
            raise
        say(f"wsl: error: {describe(err)}")
        return 2
    except OSError as err:  # a full disk or a mount that turned read-only mid-way
        if err.errno not in writable.WRITE_ERRNOS or os.environ.get("WSL_DEBUG"):
            raise
        say(f"wsl: error: cannot write {err.filename or ''}: {err.strerror}")
        return 2
    except Interrupted as err:  # the checkpoint is written
        say(f"wsl: {err}")
        return 128 + err.signum
    except NonFiniteLoss as err:
        say(f"wsl: {err}")
        return 1
    except Terminated:  # as Ctrl-C: what is finished (shards, features, checkpoints) is kept
        say("wsl: stopped by SIGTERM; re-run the same command to go on")
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:  # before training started or outside it: nothing to save
        say("wsl: interrupted")
        return 130
    except BrokenProcessPool:  # no stop signal came: a worker was killed (out of memory?)
        if os.environ.get("WSL_DEBUG"):
            raise
        say("wsl: error: a worker process died abruptly (killed by the system: out of memory?); "
            "re-run the same command to go on")
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)


def through_stop(handler, args) -> int:
    """`handler(args)`, where a stop signal to the process group is said as a stop though a
    process pool's workers (which end at once on it) were reported dead first: the pool can
    break before this process handles its own copy of the signal, raised while waiting here."""
    try:
        return handler(args)
    except BrokenProcessPool:
        for _ in range(20):  # short sleeps: a signal taken by another thread is raised between them
            time.sleep(0.05)
        raise
