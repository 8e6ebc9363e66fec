"""Bad input: what the loaders do with corrupt files and broken annotations (docs/data_formats.md).

Two kinds of problems:
- found while indexing (missing frame files, pose frames with NaN or missing keys, unreadable pose or video
  files): the item is left out of the index and counted in an ``IndexReport``, which logs one summary line;
- found while loading (an image or video frame that does not decode): the dataset loads a replacement instead,
  a random index from a generator seeded by the draw (``sampler.replacement_rng``), so the replacement is the same
  on every worker, rank count and resume, and replacements spread over the data (overlapping clips that share
  one bad frame do not all become the same clip). The dataset remembers the bad file (``KnownBadFiles``): samples
  that use it are replaced without reading it again, and it is warned about once. The sample says what happened:
  ``num_skipped`` (candidates rejected) and ``bad_files`` ("path<TAB>reason" lines). Too many failures in a row mean
  the data is broken, not one file: ``DataBrokenError``.
A bad sample never turns into zeros.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Callable, Iterable, Optional, Sequence, TypeVar

from .sampler import replacement_rng

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


class KnownBadFiles:
    """The unreadable files one dataset has met in this process, path -> reason.

    ``warn``: log each once, when first met. The trainer turns it off and warns once per run for all ranks and
    loader workers instead, from the ``bad_files`` its batches carry.
    """

    def __init__(self, what: str, warn: bool = True):
        self.what, self.warn = what, warn
        self.reasons: dict[str, str] = {}

    def load_with_replacement(self, load: Callable[[int], T], index: int, num_items: int, seed: int, draw_id: int,
                              files_of: Optional[Callable[[int], Sequence[str]]] = None,
                              max_consecutive: int = MAX_CONSECUTIVE_BAD) -> tuple[T, int, list[str]]:
        """``load(index)``, or when it raises BadSampleError (or ``files_of(index)`` names a known bad file) the
        load of a random index from ``replacement_rng(seed, draw_id)``, and so on.

        Returns (item, index used, the path of each bad file met). ``files_of`` lists the files an
        index reads, when they are known without reading (image files; not frames of a video, whose error names
        the whole video).
        """
        met: list[str] = []
        candidate, rng = index, None
        for _ in range(max_consecutive + 1):
            known = [f for f in files_of(candidate) if f in self.reasons] if files_of is not None else []
            if known:
                met.append(known[0])
            else:
                try:
                    return load(candidate), candidate, met
                except BadSampleError as err:
                    if err.path not in self.reasons:
                        self.reasons[err.path] = err.reason
                        if self.warn:
                            logger.warning("%s: %s; replaced by a random valid sample (each bad file is reported "
                                           "once)", self.what, err)
                    met.append(err.path)
            rng = rng if rng is not None else replacement_rng(seed, draw_id)
            candidate = int(rng.integers(num_items))
        raise DataBrokenError(
            f"{self.what}: {max_consecutive + 1} consecutive samples failed to load, drawn for index {index} (last: "
            f"{met[-1]}: {self.reasons[met[-1]]}); the data is broken, not one file: check the files and the mount"
        )

    def load_sample(self, load: Callable[[int, int], dict], key, num_items: int, seed: int,
                    files_of: Optional[Callable[[int], Sequence[str]]] = None) -> dict:
        """A dataset's ``__getitem__``: key (dataset_index, draw_id) or a plain index i (= (i, i)) -> the sample of
        ``load(index, draw_id)`` (a replacement's augmentation also comes from draw_id), with ``sample_id`` (the
        index used), ``num_skipped`` and ``bad_files`` (one string, so that batches collate: see parse_bad_files)."""
        index, draw_id = key if isinstance(key, tuple) else (key, key)
        sample, used, met = self.load_with_replacement(lambda i: load(i, draw_id), index, num_items, seed, draw_id,
                                                       files_of)
        sample.update(sample_id=used, num_skipped=len(met),
                      bad_files="\n".join(f"{path}\t{self.reasons[path]}" for path in met))
        return sample


def parse_bad_files(batch_bad_files: Iterable[str]) -> dict[str, str]:
    """The ``bad_files`` strings of a batch's samples -> {path: reason}."""
    return dict(line.split("\t", 1) for text in batch_bad_files for line in text.split("\n") if line)
