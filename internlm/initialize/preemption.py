"""Stopping at a step boundary. Slurm pre-emption (SIGTERM / SIGUSR1): every rank saves, rank 0 requeues the job,
which resumes from that checkpoint. Ctrl-C (SIGINT) the first time: every rank saves and the run exits 130; a second
Ctrl-C stops at once, without saving."""

from __future__ import annotations

import enum
import logging
import os
import signal
import subprocess
import threading
import time
from typing import Optional

from .signals import PREEMPTION_SIGNALS

logger = logging.getLogger(__name__)


class StopRequest(enum.Enum):
    """Why a run stops early; the value is what the log says. Ordered: when ranks disagree, the later one wins."""

    PREEMPTION = "pre-emption signal"
    INTERRUPT = "SIGINT (Ctrl-C)"


_ORDER = (None, StopRequest.PREEMPTION, StopRequest.INTERRUPT)


class PreemptionFlag:
    """SIGTERM / SIGUSR1 and a first SIGINT set ``raised``. The trainer sums each kind over ranks with the step's
    statistics (one all-reduce, no sync of its own), so every rank stops at the same step boundary for the same
    reason. A second SIGINT raises KeyboardInterrupt (the run stops at once), unless it comes within
    ``DUPLICATE_WINDOW_S`` of the first: torchrun forwards the terminal's Ctrl-C to ranks that the terminal already
    signalled, so one keypress arrives twice."""

    SIGNALS = PREEMPTION_SIGNALS + (signal.SIGINT,)
    DUPLICATE_WINDOW_S = 1.0

    def __init__(self, announce: bool = True):
        self.raised: Optional[StopRequest] = None
        self.announce = announce  # say on stderr what a Ctrl-C does (rank 0)
        self._first_sigint: Optional[float] = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _raise(self, request: StopRequest) -> None:
        if _ORDER.index(request) > _ORDER.index(self.raised):
            self.raised = request

    def _handle(self, signum, frame):
        if signum != signal.SIGINT:
            self._raise(StopRequest.PREEMPTION)
            return
        now = time.monotonic()
        if self._first_sigint is None:
            self._first_sigint = now
            self._raise(StopRequest.INTERRUPT)
            if self.announce:  # os.write: print() may not re-enter a stream the interrupted code was writing
                os.write(2, b"SIGINT: saving a checkpoint at the end of this step, then stopping "
                            b"(Ctrl-C again to stop at once, without saving)\n")
        elif now - self._first_sigint > self.DUPLICATE_WINDOW_S:
            raise KeyboardInterrupt("second SIGINT (Ctrl-C): stopped at once, without saving")

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def requeue_slurm_job(is_main: bool) -> None:
    job = os.environ.get("SLURM_JOB_ID")
    if not (is_main and job):
        return
    try:
        out = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        logger.error("could not requeue slurm job %s (%s); resubmit it to resume", job, exc)
        return
    if out.returncode != 0:
        logger.error("could not requeue slurm job %s (scontrol requeue: %s); resubmit it to resume (only batch jobs "
                     "submitted with --requeue can be requeued)", job, (out.stderr or out.stdout).strip())
        return
    logger.warning("slurm job %s requeued; it will resume from the checkpoint just written", job)
