"""Throughput and ETA of a loop with a known number of steps."""

from __future__ import annotations

import time


def format_duration(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class StepTimer:
    """Seconds per step (exponential average after the first, slower, steps) and the ETA."""

    def __init__(self, total_steps: int, smoothing: float = 0.9):
        self.total = total_steps
        self.smoothing = smoothing
        self.avg = None
        self._last = time.perf_counter()

    def tick(self) -> float:
        now = time.perf_counter()
        dt, self._last = now - self._last, now
        self.avg = dt if self.avg is None else self.smoothing * self.avg + (1 - self.smoothing) * dt
        return dt

    def eta(self, done: int) -> str:
        if self.avg is None:
            return "?"
        return format_duration(self.avg * (self.total - done))
