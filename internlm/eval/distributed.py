"""Collectives of the eval scripts: gather per-rank results in rank order, add up sums.

Every helper is a no-op pass-through in a single process. Tensors travel on the process group's device (CUDA
for NCCL, CPU for gloo) and come back on the CPU.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.distributed as dist

from internlm.initialize.launch import DistContext


def _comm_device(ctx: DistContext) -> torch.device:
    return ctx.device if dist.get_backend() == "nccl" else torch.device("cpu")


def gather_rows(rows: torch.Tensor, ctx: DistContext, to_all: bool = False) -> Optional[torch.Tensor]:
    """Concatenate every rank's (n_r, ...) tensor in rank order (shards of different sizes are padded for the
    collective). -> the whole (sum n_r, ...) tensor on rank 0 (on every rank with ``to_all``), None elsewhere."""
    if not ctx.is_distributed:
        return rows.cpu()
    device = _comm_device(ctx)
    local = rows.to(device).contiguous()
    sizes = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(ctx.world_size)]
    dist.all_gather(sizes, torch.tensor([local.shape[0]], dtype=torch.int64, device=device))
    sizes = [int(s) for s in sizes]
    padded = torch.zeros((max(sizes),) + tuple(local.shape[1:]), dtype=local.dtype, device=device)
    padded[:local.shape[0]] = local
    if to_all:
        parts = [torch.empty_like(padded) for _ in range(ctx.world_size)]
        dist.all_gather(parts, padded)
    else:
        parts = [torch.empty_like(padded) for _ in range(ctx.world_size)] if ctx.is_main else None
        dist.gather(padded, parts, dst=0)
        if not ctx.is_main:
            return None
    return torch.cat([p[:n] for p, n in zip(parts, sizes)]).cpu()


def gather_lists(items: list, ctx: DistContext) -> list[Any]:
    """Concatenate every rank's python list in rank order, on every rank (small metadata: keys, ids)."""
    if not ctx.is_distributed:
        return list(items)
    parts: list = [None] * ctx.world_size
    dist.all_gather_object(parts, list(items))
    return [x for part in parts for x in part]


def sum_over_ranks(values: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Element-wise sum over ranks (float64 on the CPU)."""
    values = values.double()
    if not ctx.is_distributed:
        return values.cpu()
    device = _comm_device(ctx)
    out = values.to(device).clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.cpu()
