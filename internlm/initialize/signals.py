"""The signals that stop a run at a step boundary, and what the DataLoader workers do with them.

slurm (``--signal``, scancel) and torchrun signal the whole process group, and Ctrl-C sends SIGINT to the whole
foreground group, so a rank's DataLoader workers get these signals too. A worker that dies of one makes the
DataLoader raise in its parent, in the middle of the save the signal asked for. Workers therefore ignore them: the
rank that owns them saves and then shuts them down itself (and kills them if it fails, see ``initialize/crash.py``).
"""

from __future__ import annotations

import contextlib
import signal
from typing import Iterator

PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)  # slurm / torchrun: save, requeue (under slurm), exit 0
STOP_SIGNALS = PREEMPTION_SIGNALS + (signal.SIGINT,)  # and Ctrl-C: save, exit 130 (a second one: stop at once)


def ignore_stop_signals(worker_id: int = 0) -> None:
    """A DataLoader ``worker_init_fn``: this process ignores the stop signals from now on (one that arrived while
    they were blocked, see ``stop_signals_blocked``, is discarded)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


@contextlib.contextmanager
def stop_signals_blocked() -> Iterator[None]:
    """Start loader workers inside this: they inherit the blocked signals (also across a spawn's exec) until their
    ``worker_init_fn`` ignores them, so none dies in between. The parent gets a signal sent meanwhile on exit."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
