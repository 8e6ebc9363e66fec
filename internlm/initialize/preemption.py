"""Slurm pre-emption: SIGTERM / SIGUSR1 ask every rank to save at the next step boundary; rank 0 then requeues the
job, which resumes from that checkpoint."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading

from .signals import PREEMPTION_SIGNALS

logger = logging.getLogger(__name__)


class PreemptionFlag:
    """SIGTERM / SIGUSR1 set ``raised``. The trainer sums it over ranks with each step's statistics (one all-reduce,
    no sync of its own), so every rank stops at the same step boundary."""

    SIGNALS = PREEMPTION_SIGNALS

    def __init__(self):
        self.raised = False
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.raised = True

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def requeue_slurm_job(is_main: bool) -> None:
    job = os.environ.get("SLURM_JOB_ID")
    if not (is_main and job):
        return
    try:
        subprocess.run(["scontrol", "requeue", job], check=True, timeout=60)
        logger.warning("slurm job %s requeued; it will resume from the checkpoint just written", job)
    except (OSError, subprocess.SubprocessError) as exc:
        logger.error("could not requeue slurm job %s (%s); resubmit it to resume", job, exc)
