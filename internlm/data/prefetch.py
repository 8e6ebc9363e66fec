"""Batches moved to the GPU one step ahead: the next batch's host-to-device copy (from pinned memory, on a side
stream) runs while the current step computes, instead of at the start of the step, in its stream."""

from __future__ import annotations

from typing import Iterable, Iterator, Optional

import torch


def to_device(batch: dict, device: torch.device, non_blocking: bool = True) -> dict:
    return {k: (v.to(device, non_blocking=non_blocking) if torch.is_tensor(v) else v) for k, v in batch.items()}


class DevicePrefetcher:
    """Iterates the batches of ``batches`` (dicts of tensors in pinned memory, and other values) on ``device``.
    On a CPU device it only passes them through."""

    def __init__(self, batches: Iterable[dict], device: torch.device):
        self.batches = iter(batches)
        self.device = device
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self._next: Optional[dict] = None
        self._ready = None  # the event the copy of _next records

    def _start(self) -> None:
        host = next(self.batches)
        if self.stream is None:
            self._next = host
            return
        with torch.cuda.stream(self.stream):
            self._next = to_device(host, self.device)
            self._ready = torch.cuda.Event()
            self._ready.record(self.stream)

    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict:
        if self._next is None:
            self._start()  # StopIteration ends the iteration here
        batch, ready = self._next, self._ready
        self._next = None
        if self.stream is not None:
            torch.cuda.current_stream(self.device).wait_event(ready)
            for v in batch.values():  # the copies belong to the compute stream from now on (allocator reuse)
                if torch.is_tensor(v) and v.device.type == "cuda":
                    v.record_stream(torch.cuda.current_stream(self.device))
        try:
            self._start()
        except StopIteration:
            self._next = None
            self.batches = iter(())
        return batch
