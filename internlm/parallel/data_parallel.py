"""Data parallelism on PyTorch's own stack, applied from outside the model (torchtitan style).

Modes, from ``parallel.zero1`` and the world size:
- "single": one process.
- "ddp":    zero1 = 1: DistributedDataParallel; every rank keeps the whole optimizer state.
- "zero1":  zero1 <= 0 (whole data-parallel group) or > 1 (groups of that size): DDP for the gradients and
            torch's ZeroRedundancyOptimizer, which shards the optimizer state (ZeRO-1).
- "fsdp":   zero1 = dict(fsdp=True): FSDP2 ``fully_shard`` on every block and the root, parameters sharded
            (the teacher is sharded the same way, so its EMA update stays shard-local).

Communication in fp16/bf16 runs (parallel.low_precision_comm, default on): DDP's gradient buckets cross nodes in
the compute dtype and are summed in fp32 (comm_hooks.py); FSDP2 gathers parameters in the compute dtype
(MixedPrecisionPolicy(param_dtype=low, reduce_dtype=fp32)). ZeRO-1's parameter broadcast after the optimizer
step (fp32, ZeroRedundancyOptimizer) overlaps nothing: where the replicated optimizer state fits (300M and 1B on
80 GB cards, benchmarks/RESULTS.md), plain DDP (zero1 = 1) has no broadcast at all.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator, Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from internlm.config.schema import AdamConfig, ParallelConfig
from internlm.parallel.comm_hooks import LowPrecisionGradReduce, node_layout, register_low_precision_reduce
from internlm.parallel.grad_accumulation import GradAccumulationFusion, fused_wgrad_problem, fusion_wanted
from internlm.solver.optimizer import adamw_kwargs, param_groups

logger = logging.getLogger(__name__)


def dist_world_size() -> int:
    """The number of ranks (1 without torch.distributed)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def all_reduce_(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over all ranks in place (nothing to do on one process); returns it."""
    if dist_world_size() > 1:
        dist.all_reduce(t)
    return t


def _fully_shard():
    """FSDP2's fully_shard and MixedPrecisionPolicy."""
    try:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard  # torch >= 2.6
    except ImportError:
        from torch.distributed._composable.fsdp import MixedPrecisionPolicy, fully_shard  # torch 2.5
    return fully_shard, MixedPrecisionPolicy


def resolve_mode(cfg: ParallelConfig, world_size: int) -> str:
    z = cfg.zero1_config
    if world_size == 1:
        return "single"
    if z.fsdp:
        return "fsdp"
    return "ddp" if z.size == 1 else "zero1"


class DataParallelPlan:
    """Wraps the student (and teacher) of a meta-architecture and builds the matching optimizer."""

    def __init__(self, cfg: ParallelConfig, world_size: int, device: torch.device):
        self.cfg = cfg
        self.world_size = world_size
        self.device = device
        self.mode = resolve_mode(cfg, world_size)
        self.zero_group = None
        self.fusion: Optional[GradAccumulationFusion] = None  # the student's block gradients, when fused

    # -------------------------------------------------------------------------------------- wrapping

    def apply(self, meta: nn.Module, bucket_bytes: int) -> None:
        """Wrap meta.student / meta.teacher in place. Before this, every rank must hold the same weights."""
        fuse = fusion_wanted(self.cfg.grad_accumulation_fusion, self.device, meta.student_dtype, self.mode)
        problem = fused_wgrad_problem(self.device) if fuse else None
        if problem is not None:  # the fused GEMM exists but fails here: say so, and do without it
            if self.cfg.grad_accumulation_fusion:
                raise RuntimeError(f"parallel.grad_accumulation_fusion=True, but the fp16 -> fp32 weight-gradient GEMM "
                                   f"fails on {self.device}: {problem}; set it to False")
            logger.warning("gradient accumulation fusion off: the fp16 -> fp32 weight-gradient GEMM fails on %s: %s",
                           self.device, problem)
            fuse = False
        if self.mode == "single":
            if fuse:
                self.fusion = GradAccumulationFusion(meta.student.backbone, "backbone.", bucket_bytes)
            return
        self._broadcast_from_rank0(meta)
        low = meta.student_dtype if self.cfg.low_precision_comm else None  # fp16 / bf16, or None
        if self.mode in ("ddp", "zero1"):
            if fuse:
                # the blocks' weights are reduced by the fusion's own buckets, in a process group of their own
                group = dist.new_group(list(range(self.world_size)))
                layout = node_layout(self.world_size)
                reducer = LowPrecisionGradReduce(low, layout) if low is not None and layout.nodes > 1 else None
                self.fusion = GradAccumulationFusion(meta.student.backbone, "backbone.", bucket_bytes, group,
                                                     reducer)
                DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(meta.student, self.fusion.names)
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            # (the student has no buffers, so DDP's buffer syncing has nothing to do); the gradients are views into
            # DDP's buckets instead of a second copy
            meta.student = DistributedDataParallel(meta.student, device_ids=device_ids,
                                                   bucket_cap_mb=max(bucket_bytes / 2**20, 1.0),
                                                   gradient_as_bucket_view=True)
            if low is not None:
                register_low_precision_reduce(meta.student, low)
            if self.mode == "zero1":
                size = self.cfg.zero1_config.size
                if 1 < size < self.world_size:
                    if self.world_size % size:
                        raise ValueError(f"parallel.zero1={size} must divide the world size {self.world_size}")
                    self.zero_group, _ = dist.new_subgroups(size)
            return
        fully_shard, policy = _fully_shard()
        for model, dtype in ((meta.student, low), (meta.teacher, meta.teacher_dtype if low is not None else None)):
            # parameters gathered in the compute dtype (autocast would cast them anyway), gradients reduced in fp32
            mp = {"mp_policy": policy(param_dtype=dtype, reduce_dtype=torch.float32)} if dtype is not None else {}
            model.backbone.cast_weights_once = False  # FSDP2 gathers each block's weights itself
            for block in model.backbone.blocks:
                fully_shard(block, **mp)
            fully_shard(model, **mp)

    @staticmethod
    @torch.no_grad()
    def _broadcast_from_rank0(meta: nn.Module) -> None:
        for t in list(meta.parameters()) + list(meta.buffers()):
            dist.broadcast(t.data, src=0)

    # ------------------------------------------------------------------------------------- optimizer

    def build_optimizer(self, student: nn.Module, adam: AdamConfig) -> torch.optim.Optimizer:
        groups = param_groups(student, adam.weight_decay)
        kwargs = adamw_kwargs(adam, self.device)
        if self.mode != "zero1":
            return torch.optim.AdamW(groups, **kwargs)
        from torch.distributed.optim import ZeroRedundancyOptimizer

        zero = ZeroRedundancyOptimizer(groups[0]["params"], optimizer_class=torch.optim.AdamW,
                                       process_group=self.zero_group, weight_decay=groups[0]["weight_decay"],
                                       **kwargs)
        zero.add_param_group(groups[1])
        return zero

    def owned_parameters(self, student: nn.Module,
                         optimizer: torch.optim.Optimizer) -> Iterator[tuple[str, nn.Parameter]]:
        """(name, parameter) pairs whose optimizer state this rank holds: its ZeRO-1 partition, its FSDP shards
        (DTensors) or, replicated, all of them."""
        named = list(unwrap(student).named_parameters())
        if self.mode != "zero1":
            yield from ((n, p) for n, p in named if p.requires_grad)
            return
        local = {id(p) for group in optimizer.optim.param_groups for p in group["params"]}
        yield from ((n, p) for n, p in named if id(p) in local)

    def inner_optimizer(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """The optimizer whose ``state`` holds this rank's Adam moments."""
        return optimizer.optim if self.mode == "zero1" else optimizer

    # --------------------------------------------------------------------------- gradient accumulation

    def begin_step(self) -> None:
        """Before the first accumulation chunk of an optimizer step."""
        if self.fusion is not None:
            self.fusion.begin_step()

    def finish_step(self) -> None:
        """After the last chunk's backward: every trainable parameter has its reduced .grad."""
        if self.fusion is not None:
            self.fusion.finish_step()

    def grad_sync(self, student: nn.Module, enabled: bool):
        """Context for one accumulation chunk: gradients are reduced across ranks only when ``enabled``."""
        if self.fusion is not None:
            self.fusion.set_sync(enabled)
        if self.mode in ("ddp", "zero1") and not enabled:
            return student.no_sync()
        if self.mode == "fsdp":
            student.set_requires_gradient_sync(enabled)
        return contextlib.nullcontext()


def local_parameters(module: nn.Module) -> list[torch.Tensor]:
    """The parameters of ``module`` as this rank holds them, detached: its own shards under FSDP2 (the root's
    parameters, which FSDP2 keeps gathered after a forward, are resharded first), the whole tensors otherwise. In
    ``parameters()`` order, so two models wrapped alike (student and teacher) pair up shard by shard."""
    if hasattr(module, "reshard"):  # fully_shard'ed
        module.reshard()
    return [p.detach().to_local() if hasattr(p, "to_local") else p.detach() for p in module.parameters()]


def unwrap(module: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (FSDP2 modifies the module in place, nothing to unwrap)."""
    return module.module if isinstance(module, DistributedDataParallel) else module
