"""One rank of tests/test_comm_hooks.py: a DDP parameter whose gradient is the rank's chosen vector, reduced by
LowPrecisionGradReduce on gloo; writes the reduced gradient to {out}/rank{r}.pt.

    python tests/comm_hook_worker.py OUT DTYPE RANKS_PER_NODE   (RANK, WORLD_SIZE, MASTER_ADDR/PORT in the env)
"""

import os
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from internlm.parallel.comm_hooks import LowPrecisionGradReduce, low_precision_reduce_hook, node_layout


def rank_gradient(rank: int, n: int) -> torch.Tensor:
    """Random values, and at [0] a sum that one rounding gets right and rounding at every addition does not:
    4 * (1, 2^-11, 2^-11, 2^-11) over 4 ranks (fp16: 1 + 3 * 2^-11 rounds to 1 + 2^-9; added one at a time, each
    2^-11 is lost)."""
    g = torch.randn(n, generator=torch.Generator().manual_seed(rank))
    g[0] = 4.0 if rank == 0 else 4.0 * 2.0 ** -11
    return g


class Weighted(torch.nn.Module):
    """sum(w * x): the gradient of w is x."""

    def __init__(self, n: int):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(n))

    def forward(self, x):
        return (self.weight * x).sum()


def main(out: str, dtype: str, ranks_per_node: int) -> None:
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", rank=rank, world_size=world)
    n = 1001  # not a multiple of the world size: the hook pads
    module = Weighted(n)
    ddp = DistributedDataParallel(module, bucket_cap_mb=0.001, gradient_as_bucket_view=True)
    ddp.register_comm_hook(LowPrecisionGradReduce(getattr(torch, dtype), node_layout(world, ranks_per_node)),
                           low_precision_reduce_hook)
    ddp(rank_gradient(rank, n)).backward()
    torch.save(module.weight.grad.clone(), os.path.join(out, f"rank{rank}.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
