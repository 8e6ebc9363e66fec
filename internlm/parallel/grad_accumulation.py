"""Gradient accumulation fusion for the transformer blocks' linear layers (``parallel.grad_accumulation_fusion``,
Megatron-LM's scheme), applied from outside the model like the other wrappers.

Without it, under fp16/bf16 autocast each accumulation chunk of a step casts every trainable block weight to the
compute dtype, adds the weight gradients of the passes that share a block (global crops, local crops, the joint
sequence) in that dtype, casts the sum to fp32 and adds it to the fp32 gradient of the earlier chunks: ~60 bytes of
memory traffic per weight per step at 4 chunks, ~45 ms of the 1B stage-2 step on an H100 (benchmarks/RESULTS.md).
With it, the weight-gradient GEMM of every pass adds its product straight into an fp32 buffer (C += A B with
fp16/bf16 A, B and an fp32 C: torch's ``addmm`` with ``out_dtype``, CUDA), and the weights are cast once per optimizer
step, not once per chunk.

Those gradients bypass autograd, so DDP cannot see them become ready: this module reduces them itself. The blocks'
weights are left out of DDP; each block call counts one use and a hook on the block's input gradient (which autograd
computes only after the block's whole backward) counts it done; in the chunk that synchronises, a bucket of blocks
whose uses are all done is averaged over the ranks at once (its own process group, buckets launched in the same
order on every rank), overlapping the rest of the backward, as DDP's buckets do. Across nodes in fp16/bf16 runs
the buckets go through the same low-precision reduction as DDP's (comm_hooks.py).

Off by default where the fused GEMM is missing (CPU; torch < 2.12, see ``fused_wgrad_available``): the fallback (a
low-precision GEMM, then an add into fp32) moves more bytes than autograd's own accumulation. It is exact in fp32
and tested on CPU (tests/test_grad_accumulation.py); not with FSDP2, whose gradients are sharded.
"""

from __future__ import annotations

import functools
import logging
from typing import Callable, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from internlm.model.modeling_internlm import InternLMBackbone
from internlm.parallel.comm_hooks import work_future

logger = logging.getLogger(__name__)


@functools.cache
def fused_wgrad_available() -> bool:
    """Whether this torch has the GEMM that accumulates fp16/bf16 products into an fp32 C in place (CUDA): the
    out_dtype overload of addmm appeared in torch 2.8; its in-place use into an fp32 C is taken from 2.12 on, as
    other projects do (earlier versions unverified here)."""
    version = tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2])
    return hasattr(torch.ops.aten.addmm, "dtype_out") and version >= (2, 12)


# ------------------------------------------------------------------------------------------- the ops


@torch.library.custom_op("egoagent::accumulate_weight_grad_", mutates_args=("weight_grad", "bias_grad"))
def accumulate_weight_grad_(grad_out: torch.Tensor, x: torch.Tensor, weight_grad: torch.Tensor,
                            bias_grad: torch.Tensor) -> None:
    """weight_grad += grad_out^T x, bias_grad += sum(grad_out) (an empty bias_grad: no bias), in weight_grad's
    dtype. grad_out (..., out), x (..., in), weight_grad (out, in) fp32."""
    g = grad_out.reshape(-1, grad_out.shape[-1])  # (M, out)
    a = x.reshape(-1, x.shape[-1])  # (M, in)
    if g.dtype == weight_grad.dtype:
        weight_grad.addmm_(g.t(), a)
    elif g.is_cuda and fused_wgrad_available():
        torch.ops.aten.addmm.dtype_out(weight_grad, g.t(), a, weight_grad.dtype, out=weight_grad)
    else:
        weight_grad.add_(torch.mm(g.t(), a))
    if bias_grad.numel():
        bias_grad.add_(g.sum(0, dtype=bias_grad.dtype))


@accumulate_weight_grad_.register_fake
def _(grad_out, x, weight_grad, bias_grad):
    return None


@torch.library.custom_op("egoagent::linear_accumulating_grad", mutates_args=())
def linear_accumulating_grad(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, weight_grad: torch.Tensor,
                             bias_grad: torch.Tensor) -> torch.Tensor:
    """F.linear(x, weight, bias) (an empty bias: none) whose backward adds the weight and bias gradients into
    weight_grad and bias_grad and returns the input's gradient only."""
    return F.linear(x, weight, bias if bias.numel() else None)


@linear_accumulating_grad.register_fake
def _(x, weight, bias, weight_grad, bias_grad):
    return x.new_empty(*x.shape[:-1], weight.shape[0])


def _setup_context(ctx, inputs, output):
    x, weight, _, weight_grad, bias_grad = inputs
    # the buffers are fresh aliases for each call (GradAccumulationFusion._block_call): the other passes' writes
    # into the same memory do not bump their version counters, so autograd's check of saved tensors holds
    ctx.save_for_backward(x, weight, weight_grad, bias_grad)


def _backward(ctx, grad_out):
    x, weight, weight_grad, bias_grad = ctx.saved_tensors
    torch.ops.egoagent.accumulate_weight_grad_(grad_out, x, weight_grad, bias_grad)
    grad_x = grad_out @ weight if ctx.needs_input_grad[0] else None  # (..., out) @ (out, in)
    return grad_x, None, None, None, None


linear_accumulating_grad.register_autograd(_backward, setup_context=_setup_context)


class AccumulatingLinear(nn.Linear):
    """nn.Linear that, while ``weight_grad`` is set (a block call of a step under fusion), adds its weight and bias
    gradients into ``weight_grad`` / ``bias_grad`` instead of returning them to autograd; an ordinary nn.Linear
    otherwise. The two slots are buffers that hold nothing (no state-dict entry, nothing for DDP to sync): the
    backbone passes them in with the block's weights for the call."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.register_buffer("weight_grad", None, persistent=False)
        self.register_buffer("bias_grad", None, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight_grad is None or not torch.is_grad_enabled():
            return super().forward(x)
        bias = self.bias if self.bias is not None else self.weight.new_empty(0)  # the op's "none"
        bias_grad = self.bias_grad if self.bias_grad is not None else self.weight.new_empty(0)
        return torch.ops.egoagent.linear_accumulating_grad(x.to(self.weight.dtype), self.weight, bias,
                                                           self.weight_grad, bias_grad)

    @classmethod
    def replacing(cls, linear: nn.Linear) -> "AccumulatingLinear":
        """A module holding ``linear``'s own parameter objects (the optimizer, EMA and checkpoints see no change)."""
        new = cls(linear.in_features, linear.out_features, linear.bias is not None, device="meta")
        new.weight = linear.weight
        new.bias = linear.bias
        new.train(linear.training)
        return new


# ---------------------------------------------------------------------------------------- the buffers


class GradAccumulationFusion:
    """The fp32 gradient buffers of one backbone's block linears, their use counting and their reduction over the
    ranks. The trainer calls ``begin_step()`` before the first chunk, ``set_sync(True)`` for the last one and
    ``finish_step()`` after its backward, which sets each parameter's ``.grad`` to its (averaged) buffer."""

    def __init__(self, backbone: InternLMBackbone, prefix: str, bucket_bytes: int,
                 group: Optional[dist.ProcessGroup] = None, low_precision=None):
        self.backbone = backbone
        self.group = group  # None: one process, nothing to reduce
        self.world = dist.get_world_size(group) if group is not None else 1
        self.low_precision = low_precision  # a comm_hooks.LowPrecisionGradReduce, or None: fp32 all-reduce
        self.ready_callback: Optional[Callable[[list[str]], None]] = None  # (names) once a bucket is complete
        block_slots: list[list[tuple[str, nn.Parameter, str]]] = []
        for i, block in enumerate(backbone.blocks):
            slots = []
            for mod_name, module in list(block.named_modules()):
                if isinstance(module, nn.Linear) and module.weight.requires_grad:
                    parent_name, _, child = mod_name.rpartition(".")
                    parent = block.get_submodule(parent_name) if parent_name else block
                    if not isinstance(module, AccumulatingLinear):
                        module = AccumulatingLinear.replacing(module)
                        setattr(parent, child, module)
                    for pname, slot in (("weight", "weight_grad"), ("bias", "bias_grad")):
                        p = getattr(module, pname)
                        if p is not None and p.requires_grad:
                            slots.append((f"{mod_name}.{slot}", p, f"{prefix}blocks.{i}.{mod_name}.{pname}"))
            block_slots.append(slots)
        # buckets of consecutive blocks from the last (the backward's order), each one flat fp32 buffer
        self.buckets: list[list[int]] = []
        current, size = [], 0
        for i in reversed(range(len(block_slots))):
            current.append(i)
            size += sum(p.numel() * 4 for _, p, _ in block_slots[i])
            if size >= bucket_bytes:
                self.buckets.append(current)
                current, size = [], 0
        if current:
            self.buckets.append(current)
        # (block, slot, parameter, name) of each bucket, in the order of its flat buffer
        self._entries = [[(i, slot, p, name) for i in blocks for slot, p, name in block_slots[i]]
                         for blocks in self.buckets]
        self.names = [e[3] for entries in self._entries for e in entries]
        self.params = [e[2] for entries in self._entries for e in entries]
        # allocated at the first step (a run's memory shows them where its gradients would be)
        self.flat: list[torch.Tensor] = []
        self.block_tensors: list[dict[str, torch.Tensor]] = [{} for _ in block_slots]
        self._pending = [0] * len(block_slots)
        self._active = False
        self._sync = False
        self._launched: list[Optional[torch.futures.Future]] = [None] * len(self.buckets)
        backbone.block_call_tensors = self._block_call

    # ----------------------------------------------------------------------------------------- the step

    def _allocate(self) -> None:
        for entries in self._entries:
            flat = torch.empty(sum(p.numel() for _, _, p, _ in entries), dtype=torch.float32,
                               device=entries[0][2].device)
            offset = 0
            for i, slot, p, _ in entries:
                self.block_tensors[i][slot] = flat[offset:offset + p.numel()].view_as(p)
                offset += p.numel()
            self.flat.append(flat)

    def begin_step(self) -> None:
        if not self.flat:
            self._allocate()
        self.backbone.forget_weight_casts()  # cast once per step, from the weights the last step wrote
        for flat in self.flat:
            flat.zero_()
        self._pending = [0] * len(self._pending)
        self._launched = [None] * len(self.buckets)
        self._active, self._sync = True, False

    def set_sync(self, sync: bool) -> None:
        """Whether the chunk about to run is the one whose backward reduces the gradients over the ranks."""
        self._sync = sync

    def finish_step(self) -> None:
        """After the last chunk's backward: the buckets not yet reduced (a block whose input needed no gradient,
        a pass whose output the loss did not use) are reduced now; every parameter's .grad becomes its averaged
        buffer."""
        self._launch_ready(force=True)
        for future in self._launched:
            future.wait()
        for i, slot, p, name in (e for entries in self._entries for e in entries):
            if p.grad is not None:  # autograd's, never reduced over the ranks: a forward outside begin/finish
                raise RuntimeError(f"gradient accumulation fusion: {name} also has a gradient from autograd (a "
                                   "forward of the student with gradients outside Trainer.train_step?)")
            p.grad = self.block_tensors[i][slot]
        self._active = self._sync = False

    # ----------------------------------------------------------------------------------- block calls

    def _block_call(self, i: int, x: torch.Tensor) -> Optional[dict[str, torch.Tensor]]:
        """Called by the backbone before block i runs with gradients: counts the use and returns the buffers the
        block's linears accumulate into (None outside a step: autograd then returns the gradients as usual)."""
        if not self._active:
            return None
        self._pending[i] += 1
        if x.requires_grad:
            x.register_hook(lambda grad, i=i: self._block_done(i))
        return {slot: _alias(view) for slot, view in self.block_tensors[i].items()}

    def _block_done(self, i: int) -> None:
        self._pending[i] -= 1
        if self._sync and self._pending[i] == 0:
            self._launch_ready(force=False)

    def _launch_ready(self, force: bool) -> None:
        # in bucket order only, so every rank issues the same collectives in the same order
        for b, blocks in enumerate(self.buckets):
            if self._launched[b] is not None:
                continue
            if not force and any(self._pending[i] for i in blocks):
                return
            self._launched[b] = self._reduce(self.flat[b])
            if self.ready_callback is not None:
                self.ready_callback([name for _, _, _, name in self._entries[b]])

    def _reduce(self, flat: torch.Tensor) -> torch.futures.Future:
        """The mean of ``flat`` over the ranks, in place: a future of it."""
        if self.group is None or self.world == 1:
            return work_future(None, flat)
        if self.low_precision is not None:
            return self.low_precision.reduce_flat(flat)
        flat.div_(self.world)  # as DDP's default hook: divide, then sum
        return work_future(dist.all_reduce(flat, group=self.group, async_op=True), flat)


def _alias(t: torch.Tensor) -> torch.Tensor:
    """A tensor on ``t``'s memory with a version counter of its own (a view would share ``t``'s)."""
    return t.new_empty(0).set_(t.untyped_storage(), t.storage_offset(), t.shape, t.stride())


def fused_wgrad_problem(device: torch.device) -> Optional[str]:
    """Why the fused weight-gradient GEMM cannot run on ``device`` (None: it can, or the fallback runs there): a
    small fp16 product added into an fp32 matrix on the device, against the fp32 product."""
    if device.type != "cuda" or not fused_wgrad_available():
        return None
    try:
        g = torch.randn(64, 32, device=device, dtype=torch.float16)
        x = torch.randn(64, 48, device=device, dtype=torch.float16)
        acc = torch.ones(32, 48, device=device)
        torch.ops.egoagent.accumulate_weight_grad_(g, x, acc, acc.new_empty(0))
        want = 1 + g.float().t() @ x.float()
        if not torch.allclose(acc, want, rtol=1e-3, atol=1e-2):
            return f"its result is off by up to {(acc - want).abs().max().item():.3g} from fp32's"
    except Exception as exc:  # noqa: BLE001 - whatever fails, the reason goes to the user
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None


def fusion_wanted(setting: Optional[bool], device: torch.device, dtype: Optional[torch.dtype], mode: str) -> bool:
    """parallel.grad_accumulation_fusion resolved: None (default) = on for fp16/bf16 runs on CUDA where torch has
    the fused GEMM, without FSDP2; True = on (an error with FSDP2), False = off."""
    if setting is False:
        return False
    if mode == "fsdp":
        if setting:
            raise ValueError("parallel.grad_accumulation_fusion=True does not work with FSDP2 (parallel.zero1="
                             "dict(fsdp=True)), whose gradients are sharded: set it to None or False")
        return False
    if setting:
        return True
    return device.type == "cuda" and dtype in (torch.float16, torch.bfloat16) and fused_wgrad_available()
