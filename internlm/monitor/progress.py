"""Throughput and ETA of a loop with a known number of steps."""

from __future__ import annotations

import time
from typing import Callable, Optional


def format_duration(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class StepTimer:
    """Seconds per step and the ETA. The ETA uses the mean pace since the first step (the first carries the
    start-up: loader workers, kernel compilation), so one slow step (a checkpoint save) or a burst of fast ones
    moves it little, and consecutive log lines agree."""

    def __init__(self, total_steps: int, clock: Callable[[], float] = time.perf_counter):
        self.total = total_steps
        self.clock = clock
        self._last = clock()
        self._paced_since: Optional[float] = None  # the end of the first step
        self._paced_steps = 0  # steps since then

    def tick(self) -> float:
        """Call once per step; returns that step's seconds."""
        now = self.clock()
        dt, self._last = now - self._last, now
        if self._paced_since is None:
            self._paced_since = now
        else:
            self._paced_steps += 1
        return dt

    def resume(self) -> None:
        """The time since the last tick was no step's (a validation run): leave it out."""
        self._last = self.clock()

    def eta(self, done: int) -> str:
        if not self._paced_steps:
            return "?"
        pace = (self._last - self._paced_since) / self._paced_steps
        return format_duration(pace * (self.total - done))
