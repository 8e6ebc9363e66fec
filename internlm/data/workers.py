"""The DataLoader workers of a training loop: started with the stop signals blocked (they ignore them from their
``worker_init_fn`` on, see ``initialize/signals.py``), so a pre-emption or Ctrl-C sent to the whole process group
leaves them running while their rank saves; ended by that rank, and killed at once when it fails."""

from __future__ import annotations

import contextlib
import os
import signal
from typing import Iterable, Iterator

from ..initialize.signals import stop_signals_blocked


@contextlib.contextmanager
def running_loader(loader: Iterable[dict]) -> Iterator[Iterator[dict]]:
    """``iter(loader)``, its workers started with the stop signals blocked (see ``build_train_loader``). On the way
    out the workers are shut down; when an exception is leaving, killed at once (they ignore the stop signals, and
    the interpreter would wait for them at exit forever)."""
    with stop_signals_blocked():
        batches = iter(loader)
    try:
        yield batches
    except BaseException:
        stop_loader_workers(batches, kill=True)
        raise
    stop_loader_workers(batches, kill=False)


def stop_loader_workers(batches: Iterator, kill: bool = False) -> None:
    """End the worker processes of a DataLoader iterator: asked to exit (up to 5 s each), or with ``kill`` SIGKILLed
    first. A no-op for an iterator without workers."""
    workers = list(getattr(batches, "_workers", ()))
    if kill:
        # torch's SIGCHLD handler would report the killed workers as the failure: unregister them first
        from torch.utils.data._utils import signal_handling

        if getattr(batches, "_worker_pids_set", False):
            signal_handling._remove_worker_pids(id(batches))
            batches._worker_pids_set = False
        for w in workers:
            if w.is_alive():
                with contextlib.suppress(OSError):
                    os.kill(w.pid, signal.SIGKILL)
    shutdown = getattr(batches, "_shutdown_workers", None)  # torch's own: queues, pin-memory thread, joins
    if shutdown is not None:
        shutdown()
    for w in workers:
        if w.is_alive():
            with contextlib.suppress(OSError):
                os.kill(w.pid, signal.SIGKILL)
            w.join(timeout=5)
