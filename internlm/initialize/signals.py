"""The pre-emption signals and what the DataLoader workers do with them.

slurm (``--signal``) and torchrun signal the whole process group, so a rank's DataLoader workers get SIGTERM or
SIGUSR1 too. A worker that dies of it makes the DataLoader raise in its parent, in the middle of the pre-emption
save. Workers therefore ignore these signals: the rank that owns them saves and then shuts them down itself.
"""

from __future__ import annotations

import contextlib
import signal
from typing import Iterator

PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


def ignore_preemption_signals(worker_id: int = 0) -> None:
    """A DataLoader ``worker_init_fn``: this process ignores the pre-emption signals from now on (one that arrived
    while they were blocked, see ``preemption_signals_blocked``, is discarded)."""
    for sig in PREEMPTION_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, PREEMPTION_SIGNALS)


@contextlib.contextmanager
def preemption_signals_blocked() -> Iterator[None]:
    """Start loader workers inside this: they inherit the blocked signals (also across a spawn's exec) until their
    ``worker_init_fn`` ignores them, so none dies in between. The parent gets a signal sent meanwhile on exit."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, PREEMPTION_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
