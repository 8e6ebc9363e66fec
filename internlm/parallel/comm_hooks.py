"""DDP gradient reduction that crosses nodes in the run's low precision and sums in fp32
(parallel.low_precision_comm, fp16/bf16 runs).

Between nodes the network is the bottleneck (one adapter per GPU, ~10x slower than NVLink), so that is where the
bytes are halved. A plain fp16/bf16 all-reduce (torch's fp16_compress_hook) would also round the partial sum at
every ring step, n - 1 roundings; here each gradient is rounded once on the way out and the sum once on the way
back. Per DDP bucket (fp32, S elements), on W GPUs in nodes of g:

1. inside the node: reduce-scatter in fp32 (NVLink), each GPU keeps S / g summed over its node;
2. between nodes, among the GPUs of one local rank: that shard, divided by W and cast to the low dtype, is
   all-to-all'd in N pieces (N nodes); each GPU sums the N pieces it receives in fp32 and rounds the sum once;
3. the summed pieces are all-gathered between nodes in the low dtype, then inside the node in fp32.

The result is the mean gradient, as DDP expects. On one node the hook is not registered: DDP's own fp32 all-reduce
is then both exact and as fast. Gradients scaled for fp16 (loss scaling) that overflow the low dtype become inf and
the step is skipped, as any fp16 overflow.
"""

import logging
import os
import socket
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeLayout:
    """Where this rank sits: nodes of ``size`` consecutive ranks."""

    size: int  # ranks per node
    world: int

    @property
    def nodes(self) -> int:
        return self.world // self.size


def node_layout(world: int, ranks_per_node: Optional[int] = None) -> NodeLayout:
    """Ranks per node: given, else the launcher's LOCAL_WORLD_SIZE (torchrun) / SLURM_NTASKS_PER_NODE, else the
    ranks sharing this rank's host name (a collective). Nodes must hold consecutive ranks, as torchrun and srun
    assign them; an uneven layout is treated as one node (no low-precision path)."""
    if ranks_per_node is None:
        for var in ("LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE"):
            if os.environ.get(var, "").isdigit():
                ranks_per_node = int(os.environ[var])
                break
    if ranks_per_node is None:
        hosts = [None] * world
        dist.all_gather_object(hosts, socket.gethostname())
        ranks_per_node = hosts.count(hosts[dist.get_rank()])
        consecutive = all(hosts[r] == hosts[r - r % ranks_per_node] for r in range(world))
        if not consecutive:
            ranks_per_node = world
    if ranks_per_node < 1 or world % ranks_per_node:
        logger.warning("%d ranks do not split into nodes of %d: gradients are all-reduced in fp32", world,
                       ranks_per_node)
        ranks_per_node = world
    return NodeLayout(ranks_per_node, world)


class LowPrecisionGradReduce:
    """The state of ``low_precision_reduce_hook``: ``ddp.register_comm_hook(LowPrecisionGradReduce(...),
    low_precision_reduce_hook)``; see the module docstring."""

    def __init__(self, dtype: torch.dtype, layout: NodeLayout):
        if dtype not in (torch.float16, torch.bfloat16):
            raise ValueError(f"LowPrecisionGradReduce: dtype {dtype} is not a low-precision float")
        self.dtype = dtype
        self.layout = layout
        rank, g = dist.get_rank(), layout.size
        # every rank creates every group, in the same order (new_group is collective)
        self.intra = self.inter = None
        for node in range(layout.nodes):
            group = dist.new_group(list(range(node * g, (node + 1) * g)))
            if rank // g == node:
                self.intra = group
        for local in range(g):
            group = dist.new_group(list(range(local, layout.world, g)))
            if rank % g == local:
                self.inter = group

    def reduce(self, bucket: dist.GradBucket) -> torch.futures.Future:
        return self.reduce_flat(bucket.buffer())

    def reduce_flat(self, buffer: torch.Tensor) -> torch.futures.Future:
        """The mean over the ranks of a flat fp32 ``buffer``, written into it; a future of ``buffer``."""
        g, nodes, world = self.layout.size, self.layout.nodes, self.layout.world
        pad = (-buffer.numel()) % (g * nodes)
        flat = F.pad(buffer, (0, pad)) if pad else buffer
        shard = torch.empty(flat.numel() // g, dtype=flat.dtype, device=flat.device)
        if g > 1:
            first = work_future(dist.reduce_scatter_tensor(shard, flat, group=self.intra, async_op=True), shard)
        else:
            shard = flat
            first = work_future(None, shard)

        def across_nodes(_) -> torch.Tensor:
            sent = shard.div(world).to(self.dtype)  # (N pieces) one rounding per gradient
            received = torch.empty_like(sent)
            work_future(dist.all_to_all_single(received, sent, group=self.inter, async_op=True), received).wait()
            summed = received.view(nodes, -1).float().sum(0).to(self.dtype)  # fp32 sum, one rounding
            gathered = torch.empty_like(sent)
            work_future(dist.all_gather_into_tensor(gathered, summed, group=self.inter, async_op=True), gathered).wait()
            return gathered.float()

        def within_node(fut) -> torch.Tensor:
            reduced = fut.value()
            if g > 1:
                full = torch.empty_like(flat)
                work_future(dist.all_gather_into_tensor(full, reduced, group=self.intra, async_op=True), full).wait()
            else:
                full = reduced
            buffer.copy_(full[:buffer.numel()])
            return buffer

        return first.then(across_nodes).then(within_node)


def work_future(work, result: torch.Tensor) -> torch.futures.Future:
    """A future of ``result`` once ``work`` is done: the work's own future (NCCL: stream-ordered, the CPU does not
    wait), or, where the backend has none (gloo's reduce-scatter), after waiting for it."""
    if work is not None:
        try:
            return work.get_future().then(lambda _: result)
        except RuntimeError:
            work.wait()
    done = torch.futures.Future()
    done.set_result(result)
    return done


def low_precision_reduce_hook(state: LowPrecisionGradReduce,
                              bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    return state.reduce(bucket)


def register_low_precision_reduce(ddp_model, dtype: torch.dtype, ranks_per_node: Optional[int] = None) -> bool:
    """Register LowPrecisionGradReduce on a DDP model when its ranks span more than one node; returns whether."""
    layout = node_layout(dist.get_world_size(), ranks_per_node)
    if layout.nodes <= 1:
        return False
    ddp_model.register_comm_hook(LowPrecisionGradReduce(dtype, layout), low_precision_reduce_hook)
    logger.info("DDP gradients: fp32 inside each node of %d ranks, %s between the %d nodes, summed in fp32",
                layout.size, str(dtype).split(".")[-1], layout.nodes)
    return True
