"""Resumable, world-size independent sampling.

The global sample stream is the concatenation of per-epoch permutations of range(N); epoch e's permutation
comes from a generator seeded with (seed, e). The trainer counts ``consumed`` stream positions. Each optimizer
step consumes ``micro_num * world_size`` consecutive positions, rank r taking
[p + r * micro_num, p + (r + 1) * micro_num). A sampler started at ``consumed`` continues the stream exactly,
whatever the world size before and after.

Keys are ``(dataset_index, draw_id)`` with draw_id = the stream position: a dataset seeds the sample's
augmentation from (seed, draw_id), so it does not depend on workers, world size or resume.
"""

from __future__ import annotations

from typing import Iterator, Optional

import numpy as np
from torch.utils.data import Sampler

# Domain tags keep the permutation generators and the per-sample generators apart even when epoch == draw_id.
_EPOCH_TAG = 0x0E90C
_SAMPLE_TAG = 0x5A3B1E
_REPLACEMENT_TAG = 0x8EB1A


def epoch_permutation(num_samples: int, seed: int, epoch: int) -> np.ndarray:
    """The order of epoch ``epoch``: a permutation of range(num_samples), int64 (N,)."""
    return np.random.default_rng([_EPOCH_TAG, seed, epoch]).permutation(num_samples)


def sample_rng(seed: int, draw_id: int) -> np.random.Generator:
    """The generator of one drawn sample's augmentation."""
    return np.random.default_rng([_SAMPLE_TAG, seed, draw_id])


def replacement_rng(seed: int, draw_id: int) -> np.random.Generator:
    """The generator of the indices that replace a drawn sample that cannot be loaded (bad_samples.py)."""
    return np.random.default_rng([_REPLACEMENT_TAG, seed, draw_id])


class SampleStream:
    """Stream position -> dataset index (caches the current epoch's permutation)."""

    def __init__(self, num_samples: int, seed: int, shuffle: bool = True):
        if num_samples <= 0:
            raise ValueError(f"SampleStream: the dataset is empty (num_samples={num_samples})")
        self.num_samples, self.seed, self.shuffle = num_samples, seed, shuffle
        self._epoch: Optional[int] = None
        self._perm: Optional[np.ndarray] = None

    def index_at(self, position: int) -> int:
        epoch, offset = divmod(position, self.num_samples)
        if not self.shuffle:
            return offset
        if epoch != self._epoch:
            self._perm, self._epoch = epoch_permutation(self.num_samples, self.seed, epoch), epoch
        return int(self._perm[offset])


class StepBatchSampler(Sampler):
    """Yields, per optimizer step, this rank's ``micro_num`` keys ``(dataset_index, draw_id)``.

    ``start``: stream positions consumed before (the trainer's ``consumed``). ``one_epoch``: the stream stops
    after N positions; the last step is dropped when it would be incomplete, so every rank runs the same number
    of steps. Otherwise the stream is endless (the trainer stops at total_steps).
    """

    def __init__(self, num_samples: int, micro_num: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 start: int = 0, shuffle: bool = True, one_epoch: bool = False):
        if not 0 <= rank < world_size:
            raise ValueError(f"StepBatchSampler: rank={rank} is not in [0, world_size={world_size})")
        if micro_num <= 0 or start < 0:
            raise ValueError(f"StepBatchSampler: micro_num={micro_num} must be > 0 and start={start} >= 0")
        self.stream = SampleStream(num_samples, seed, shuffle)
        self.num_samples, self.micro_num = num_samples, micro_num
        self.rank, self.world_size, self.start, self.one_epoch = rank, world_size, start, one_epoch
        if one_epoch and len(self) == 0:
            raise ValueError(
                f"train_one_epoch: {num_samples} samples from position {start} do not fill one step of "
                f"{self.global_batch} (micro_num={micro_num} x world_size={world_size})"
            )

    @property
    def global_batch(self) -> int:
        return self.micro_num * self.world_size

    def step_keys(self, step_start: int) -> list[tuple[int, int]]:
        """This rank's keys of the step whose first stream position is ``step_start``."""
        first = step_start + self.rank * self.micro_num
        return [(self.stream.index_at(q), q) for q in range(first, first + self.micro_num)]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        position = self.start
        while not self.one_epoch or position + self.global_batch <= self.num_samples:
            yield self.step_keys(position)
            position += self.global_batch

    def __len__(self) -> int:
        if not self.one_epoch:
            raise TypeError("StepBatchSampler: the stream is endless (train_one_epoch=False); it has no length")
        return max(0, (self.num_samples - self.start) // self.global_batch)


class EvalShardSampler(Sampler):
    """Evaluation: the fixed order 0..N-1, cut into contiguous per-rank shards, in batches of ``batch_size``.

    Shard sizes differ by at most one; gather the results with their ``sample_id`` to restore the order.
    """

    def __init__(self, num_samples: int, batch_size: int, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"EvalShardSampler: rank={rank} is not in [0, world_size={world_size})")
        self.begin = num_samples * rank // world_size
        self.end = num_samples * (rank + 1) // world_size
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[list[int]]:
        for lo in range(self.begin, self.end, self.batch_size):
            yield list(range(lo, min(lo + self.batch_size, self.end)))

    def __len__(self) -> int:
        return -(-(self.end - self.begin) // self.batch_size)
