"""Bad input: what the loaders do with corrupt files and broken annotations (docs/data_formats.md).

Two kinds of problems:
- found while indexing (missing frame files, pose frames with NaN or missing keys, unreadable pose or video
  files): the item is left out of the index and counted in an ``IndexReport``, which logs one summary line;
- found while loading (an image or video frame that does not decode): the dataset loads a deterministic
  replacement instead (the next index), logs a warning naming the file, and counts it in the sample's
  ``num_skipped``. Too many failures in a row mean the data is broken, not one file: ``DataBrokenError``.
A bad sample never turns into zeros.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Callable, TypeVar

logger = logging.getLogger("internlm.data")

# More consecutive failures than this and the run stops: the data (or its mount) is broken, not one file.
MAX_CONSECUTIVE_BAD = 50
# Names listed in an index summary line.
SUMMARY_NAMES = 5


class BadSampleError(Exception):
    """One input file (or one frame of it) cannot be used. ``path`` names the file."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class DataBrokenError(RuntimeError):
    """Too many consecutive samples failed to load."""


class IndexReport:
    """Counts the problems found while indexing one dataset; ``log`` writes one summary line."""

    def __init__(self, what: str):
        self.what = what
        self.counts: Counter[str] = Counter()
        self.names: list[str] = []

    def add(self, problem: str, name: str, n: int = 1) -> None:
        self.counts[problem] += n
        if len(self.names) < SUMMARY_NAMES:
            self.names.append(f"{name} ({problem})")

    def merge(self, other: "IndexReport") -> None:
        self.counts.update(other.counts)
        self.names.extend(other.names[: SUMMARY_NAMES - len(self.names)])

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        counts = ", ".join(f"{k}: {v}" for k, v in sorted(self.counts.items()))
        more = "" if self.total <= len(self.names) else ", ..."
        return f"{self.what}: left out while indexing: {counts}; e.g. {'; '.join(self.names)}{more}"

    def log(self) -> None:
        if self.total:
            logger.warning(self.summary())


T = TypeVar("T")


def load_with_replacement(load: Callable[[int], T], index: int, num_items: int, what: str,
                          max_consecutive: int = MAX_CONSECUTIVE_BAD) -> tuple[T, int, int]:
    """``load(index)``, or on BadSampleError ``load(index + 1)`` and so on (wrapping around).

    Returns (item, index actually used, number of items skipped). Deterministic: the replacement depends
    only on the index and the files, never on worker or timing.
    """
    last_error = None
    for skipped in range(max_consecutive + 1):
        candidate = (index + skipped) % num_items
        try:
            return load(candidate), candidate, skipped
        except BadSampleError as err:
            logger.warning("%s: skipping sample %d: %s", what, candidate, err)
            last_error = err
    raise DataBrokenError(
        f"{what}: {max_consecutive + 1} consecutive samples from index {index} failed to load (last: {last_error}); "
        "the data is broken, not one file: check the files and the mount"
    )
