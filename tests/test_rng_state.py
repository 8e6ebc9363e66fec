"""The resume's random state per rank: CUDA's generator of the rank's own device only, whatever number of GPUs the
launcher lets each process see (torchrun: all 8; srun: 1). No GPU here: ``GeneratorsAsDevices`` stands in for
torch.cuda with one torch.Generator per "visible device", the interface rng_state / set_rng_state use
(get_rng_state(device), set_rng_state(state, device))."""

from __future__ import annotations

import pytest
import torch

from internlm.checkpoint.train_state import rng_state, set_rng_state


class GeneratorsAsDevices:
    """``count`` visible CUDA devices, each with its own generator."""

    def __init__(self, count: int, seed: int):
        self.generators = [torch.Generator().manual_seed(seed + i) for i in range(count)]

    def device_count(self) -> int:
        return len(self.generators)

    def _generator(self, device: torch.device) -> torch.Generator:
        if not 0 <= device.index < len(self.generators):
            raise RuntimeError(f"invalid device ordinal {device.index} ({len(self.generators)} visible)")
        return self.generators[device.index]

    def get_rng_state(self, device: torch.device) -> torch.Tensor:
        return self._generator(device).get_state()

    def set_rng_state(self, state: torch.Tensor, device: torch.device) -> None:
        self._generator(device).set_state(state)

    def draw(self, device: torch.device) -> torch.Tensor:
        return torch.rand(4, generator=self._generator(device))


@pytest.mark.parametrize("saved_visible, resumed_visible", [(8, 1), (1, 8), (8, 8), (1, 1)])
def test_device_generator_of_each_rank_resumes_on_any_device_count(saved_visible, resumed_visible):
    """Two ranks (local ranks 0 and 1 of a node). Each process uses cuda:local_rank when it sees all the node's GPUs,
    cuda:0 when it sees one. After the resume, each rank's device draws what it would have drawn next, and no other
    device's generator moved."""
    world = 2
    saved, expected_next = [], []
    for rank in range(world):
        cuda = GeneratorsAsDevices(saved_visible, seed=100 * rank)
        device = torch.device("cuda", rank if saved_visible > 1 else 0)
        cuda.draw(device)  # some training
        saved.append(rng_state(device, accelerator=cuda))
        expected_next.append(cuda.draw(device))
    for rank in range(world):
        cuda = GeneratorsAsDevices(resumed_visible, seed=999)
        untouched = [g.get_state() for g in cuda.generators]
        device = torch.device("cuda", rank if resumed_visible > 1 else 0)
        set_rng_state(saved[rank], device, accelerator=cuda)
        torch.testing.assert_close(cuda.draw(device), expected_next[rank], rtol=0, atol=0)
        for i, state in enumerate(untouched):
            if i != device.index:
                assert torch.equal(cuda.generators[i].get_state(), state)


def test_cpu_runs_save_no_device_state():
    state = rng_state(torch.device("cpu"))
    assert "device" not in state and "cuda" not in state
    torch.manual_seed(3)
    want = torch.rand(3)
    torch.manual_seed(3)
    state = rng_state(torch.device("cpu"))
    torch.rand(5)
    set_rng_state(state, torch.device("cpu"))
    torch.testing.assert_close(torch.rand(3), want, rtol=0, atol=0)
