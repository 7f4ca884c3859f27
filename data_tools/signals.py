"""The signals on which a run checkpoints and stops: Ctrl-C, SIGTERM, and SLURM's SIGUSR1 /
SIGUSR2 before preemption. The training process turns them into a stop flag
(pretrain/stop.py); loader workers ignore them (loaders/workers.py), so the whole process
group can be signalled. Here, below both, so that they name one set."""
import signal

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
