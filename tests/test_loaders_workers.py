"""data_tools/loaders/workers.py: a loader worker signalled while it starts survives (torch's own
SIGTERM handler must never get the chance to kill it)."""
from __future__ import annotations

import os
import signal
import time

from torch.utils.data import DataLoader

from data_tools.loaders import workers


def slow_start(worker_id: int) -> None:
    """A worker whose start takes a second before it ignores the stop signals: the moment in
    which torch's own SIGTERM handler (installed first) would let a signal kill it."""
    time.sleep(1.0)
    workers.ignore_stop_signals(worker_id)


def test_a_worker_signalled_while_it_starts_survives():
    with workers.stop_signals_held():
        produced = iter(DataLoader(list(range(8)), batch_size=None, num_workers=2, worker_init_fn=slow_start))
    for worker in produced._workers:  # as a signal to the whole process group would
        os.kill(worker.pid, signal.SIGTERM)
    assert sorted(produced) == list(range(8))
