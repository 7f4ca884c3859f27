"""The signals on which a run checkpoints and stops: Ctrl-C, SIGTERM, and SLURM's SIGUSR1 /
SIGUSR2 before preemption. The training process turns them into a stop flag
(pretrain/stop.py); loader workers ignore them (loaders/workers.py), so the whole process
group can be signalled. Here, below both, so that they name one set."""
import signal

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


def quiet_stop() -> None:
    """A pool worker's initializer: Ctrl-C and SIGTERM reach the whole process group, and a
    worker that raised on them printed its own traceback under the parent's one line. The
    kernel's default action ends it silently instead; the parent decides what is kept
    (finished shards) and exits."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
