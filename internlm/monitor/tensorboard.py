"""TensorBoard scalars, written by rank 0 only."""

from __future__ import annotations

from typing import Mapping, Optional


class ScalarWriter:
    def __init__(self, folder: Optional[str], enabled: bool):
        self._writer = None
        if enabled and folder:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(folder)

    def write(self, step: int, scalars: Mapping[str, float], prefix: str = "train/") -> None:
        if self._writer is None:
            return
        for name, value in scalars.items():
            self._writer.add_scalar(prefix + name, value, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
