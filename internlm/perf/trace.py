"""One optimizer step of a config's trainer, traced on fake tensors: every aten op a GPU would run, with its FLOPs,
the bytes it reads and writes, its phase (forward / backward / recompute / optimizer step) and transformer block,
and the lifetime of every buffer; on a CPU, in seconds, without allocating the model.

How the trace stands in for a GPU run:
- The Trainer is built and stepped under FakeTensorMode (tensors have shapes and dtypes, no data).
- CUDA autocast: fake tensors live on the CPU here, so CPU autocast runs, plus the part of CUDA's autocast policy the
  CPU's lacks (CUDA_FP32_FUNCTIONS: layer_norm, softmax, pow, sum, ... compute in fp32 under CUDA autocast), so every
  op sees the dtypes it would see on a GPU.
- Attention is a cost record of the configured kernel (flex/flash/sdpa cannot run on fake tensors), saving what
  those kernels save for the backward (q, k, v, out and the fp32 log-sum-exp).
- Reading a value on the host (.item(), float(), .tolist(), torch.tensor(list, device=...)) is a host sync on a GPU;
  each is counted where it happens and returns 1.
- Buffers are storages; a buffer's life ends when the Python garbage collector frees its (fake) storage, exactly when
  the caching allocator would get it back on a GPU.

Two steps are run (the first creates the optimizer state); the second is the one reported.
"""

from __future__ import annotations

import bisect
import contextlib
import gc
import math
import tempfile
import weakref
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.multiprocessing.reductions import StorageWeakRef
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.data import default_collate
from torch.utils.flop_counter import flop_registry

from internlm.config import TrainConfig, with_overrides
from internlm.data.generated import GeneratedSamples
from internlm.initialize.launch import init_distributed
from internlm.model.attention import MaskLayout, PreparedMask
from internlm.model.modeling_internlm import InternLMBlock
from internlm.train.meta_arch import EgoAgentMetaArch
from internlm.train.trainer import Trainer

# Functions CUDA autocast runs in fp32 that CPU autocast leaves in the input's dtype (torch's autocast_mode.cpp,
# the CUDA "fp32" and "fp32_set_opt_dtype" lists, restricted to what a model like this one calls).
CUDA_FP32_FUNCTIONS = {
    F.layer_norm, F.group_norm, torch.layer_norm, torch.group_norm, F.softplus, F.softmax, F.log_softmax,
    torch.softmax, torch.log_softmax, torch.Tensor.softmax, torch.Tensor.log_softmax, torch.pow, torch.Tensor.pow,
    torch.Tensor.__pow__, torch.exp, torch.Tensor.exp, torch.log, torch.Tensor.log, torch.log1p, torch.Tensor.log1p,
    torch.rsqrt, torch.Tensor.rsqrt, torch.reciprocal, torch.Tensor.reciprocal, torch.sum, torch.Tensor.sum,
    torch.prod, torch.Tensor.prod, torch.cumsum, torch.Tensor.cumsum, torch.norm, torch.Tensor.norm,
    torch.linalg.vector_norm, torch.logsumexp, torch.Tensor.logsumexp, F.mse_loss, F.l1_loss, F.smooth_l1_loss,
    F.kl_div, F.nll_loss, F.binary_cross_entropy_with_logits, F.cosine_similarity, torch.cdist,
}
HOST_READS = {torch.Tensor.item: 1.0, torch.Tensor.__float__: 1.0, torch.Tensor.__int__: 1,
              torch.Tensor.__bool__: False, torch.Tensor.__index__: 1}
LOW = (torch.float16, torch.bfloat16)
GEMM_OPS = {"mm", "addmm", "bmm", "baddbmm", "addbmm", "convolution", "convolution_backward", "_convolution"}
# the GEMMs of gradient accumulation fusion (internlm/parallel/grad_accumulation.py): (FLOPs, the arguments the
# kernel reads) from the arguments; the linear's gradient buffers are passed along for its backward, not read
FUSED_GEMMS = {
    "linear_accumulating_grad": (lambda x, w, *_: 2.0 * x.numel() * w.shape[0], (0, 1, 2)),
    "accumulate_weight_grad_": (lambda g, x, *_: 2.0 * g.numel() * x.shape[-1], (0, 1, 2, 3)),
}
ALLOC_OPS = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "empty_permuted",
             "set_"}  # set_: an alias of existing memory (metadata only)
WRITE_ONLY_OPS = {"zero_", "fill_"}
ATTENTION_TILE = 128  # the query x key tile the mask-aware kernels skip or compute whole (flex's default block size)


@dataclass
class Op:
    name: str
    kind: str  # gemm | attention | pointwise | view | alloc
    flops: float
    reads: dict  # buffer id -> bytes read
    writes: dict  # buffer id -> bytes written
    dtype: torch.dtype  # compute dtype (the GEMM's inputs)
    phase: str  # forward | backward | recompute | step
    region: Optional[int]  # the transformer-block call it belongs to (a torch.compile region), else None
    step: int  # 1 or 2
    chunk: int  # accumulation chunk (0, 1) whose forward or backward it belongs to; -1: the step's own ops
    tensors: int = 1  # tensors in a foreach op's lists (kernel launches)
    # buffer id -> {(offset, shape, stride): bytes} of each distinct view read (several views of one buffer, e.g.
    # the q and k of one qkv output or a foreach over a flat gradient buffer, are each read)
    read_views: dict = field(default_factory=dict)


@dataclass
class Buffer:
    nbytes: int
    alloc: int  # index of the op that created it; -1: made before the trace (parameters) or outside it
    free: Optional[int] = None  # len(ops) when it was freed; None: alive at the end
    producer: Optional[int] = None  # index of the op that wrote it first


@dataclass
class Region:
    """One call of one transformer block: a torch.compile region (its forward, its backward, its recompute)."""

    model: str  # student | teacher
    block: int
    seq_start: Optional[int]  # autograd sequence numbers of the nodes this call created: [start, end)
    seq_end: Optional[int] = None


@dataclass
class StepTrace:
    cfg: TrainConfig
    ops: list[Op]
    buffers: dict[int, Buffer]
    regions: list[Region]
    syncs: list[tuple[int, str, int, int]]  # (index of the next op, what, step, chunk) of each host read
    param_ready: dict[str, int]  # student parameter -> op index of its last gradient accumulation (step 2)
    param_bytes: dict[str, int]  # student parameter -> fp32 bytes (in model order)
    teacher_bytes: int
    buffer_bytes: int  # registered buffers (centres, pose statistics)
    step2_start: int  # index of the first op of step 2
    chunk_samples: int
    chunks: int  # accumulation chunks traced per step: 2 (the second stands for all later ones), or 1
    compiled: bool  # traced with the weight casts of compiled blocks

    def step2_ops(self) -> list[tuple[int, Op]]:
        return [(i, op) for i, op in enumerate(self.ops) if op.step == 2]


# -------------------------------------------------------------------------------------------- attention


def tile_pairs(layout: MaskLayout, tile: int = ATTENTION_TILE, mask_aware: bool = True) -> int:
    """(query, key) pairs a tiled kernel computes: every pair of each tile that holds one allowed pair. A
    mask-unaware kernel (sdpa with a dense mask) computes the whole square."""
    L = layout.seq_len
    if not mask_aware or layout.kind == "full":
        return L * L
    block_of = {}
    for start, end in layout.image_blocks:
        for i in range(start, end):
            block_of[i] = (start, end)
    n = math.ceil(L / tile)
    computed = 0
    for qi in range(n):
        q0, q1 = qi * tile, min(L, (qi + 1) * tile)
        # the furthest key any query of this tile may see: causal, or the end of its image block
        reach = max(max(q, block_of.get(q, (0, q + 1))[1] - 1) for q in range(q0, q1))
        for ki in range(n):
            k0, k1 = ki * tile, min(L, (ki + 1) * tile)
            if k0 <= reach:
                computed += (q1 - q0) * (k1 - k0)
    return computed


def executed_pairs(layout: MaskLayout, backend: str) -> int:
    """flex skips empty tiles of any mask; flash and sdpa's flash kernel those of a causal mask; sdpa with the dense
    block-causal mask runs the memory-efficient kernel over the whole square."""
    if backend == "sdpa" and layout.kind == "block_causal":
        return tile_pairs(layout, mask_aware=False)
    return tile_pairs(layout)


class _AttentionCost(torch.autograd.Function):
    """Stands in for the attention kernel: outputs of the right shape, the kernel's saved tensors, and one
    'attention' op per forward and backward in the trace."""

    @staticmethod
    def forward(ctx, q, k, v, tracer, layout, backend):
        with tracer.attention(layout, backend, "forward", (q, k, v)) as outputs:
            out = torch.empty_like(q)  # (B, H, L, D)
            lse = q.new_empty(q.shape[:-1], dtype=torch.float32)  # (B, H, L)
            outputs += [out, lse]
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.tracer, ctx.layout, ctx.backend = tracer, layout, backend
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        with ctx.tracer.attention(ctx.layout, ctx.backend, "backward", (q, k, v, out, lse, dout)) as outputs:
            grads = [torch.empty_like(t) for t in (q, k, v)]
            outputs += grads
        return (*grads, None, None, None)


class CostedAttentionKernel:
    """Replaces a backbone's AttentionKernel during the trace (same interface)."""

    def __init__(self, backend: str, tracer: "Tracer"):
        self.backend = backend
        self.tracer = tracer

    def prepare(self, layout: MaskLayout, device, dtype) -> PreparedMask:
        return PreparedMask(layout, None)

    def __call__(self, q, k, v, mask: PreparedMask, scale: float) -> torch.Tensor:
        return _AttentionCost.apply(q, k, v, self.tracer, mask.layout, self.backend)


# ------------------------------------------------------------------------------------------------ modes


class GPUHostSemantics(TorchFunctionMode):
    """CUDA autocast's fp32 functions, and host reads counted as syncs (returning 1)."""

    def __init__(self, tracer: "Tracer"):
        super().__init__()
        self.tracer = tracer

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in HOST_READS:
            self.tracer.sync(func.__name__)
            return HOST_READS[func]
        if func is torch.tensor and "device" in kwargs and not isinstance(args[0], torch.Tensor):
            self.tracer.sync("torch.tensor(host data, device=...)")
        if func in CUDA_FP32_FUNCTIONS and torch.is_autocast_enabled("cpu") and "dtype" not in kwargs:
            args = [a.float() if isinstance(a, torch.Tensor) and a.dtype in LOW else a for a in args]
        return func(*args, **kwargs)


def _read_bytes(t: torch.Tensor) -> int:
    """What reading t costs: its elements, or its storage if smaller (a broadcast view reads its base once)."""
    return min(t.numel() * t.element_size(), t.untyped_storage().nbytes())


class Tracer(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: list[Op] = []
        self.buffers: dict[int, Buffer] = {}
        self.regions: list[Region] = []
        self.syncs: list[tuple[int, str, int, int]] = []
        self.step = 0
        self.chunk = -1
        self.phase = "step"
        self.region: Optional[int] = None
        self.paused = False
        self._attention: Optional[list] = None  # outputs of the attention op being recorded
        self._live: dict[int, int] = {}  # storage address -> buffer id, while the storage lives
        self._finalizers: list = []
        self._region_starts: list[int] = []  # sorted seq_start of the regions with autograd nodes
        self._region_by_start: list[int] = []

    # ------------------------------------------------------------------------------------- bookkeeping

    def sync(self, what: str) -> None:
        """A host read. Reads with no kernel between them wait once (the GPU is idle after the first): one sync
        (FakeTensor.tolist reads element by element; on a GPU it is one copy)."""
        if self.paused:
            return
        if self.syncs and not any(op.kind not in ("view", "alloc") for op in self.ops[self.syncs[-1][0]:]):
            return
        phase = self._context()[0]
        self.syncs.append((len(self.ops), what, self.step, self._chunk(phase)))

    def _id(self, t: torch.Tensor, op_index: Optional[int] = None) -> int:
        """The buffer id of t's storage. Storage addresses are reused once freed, so ids are handed out per live
        storage; a storage first seen as an input (parameters, anything made before tracing) is external."""
        storage = t.untyped_storage()
        address = StorageWeakRef(storage).cdata
        key = self._live.get(address)
        if key is not None:
            return key
        key = len(self.buffers)
        self._live[address] = key
        self.buffers[key] = Buffer(storage.nbytes(), op_index if op_index is not None else -1, None, op_index)

        def freed(key=key, address=address, buffers=self.buffers, ops=self.ops, live=self._live):
            buffers[key].free = len(ops)
            if live.get(address) == key:
                del live[address]

        self._finalizers.append(weakref.finalize(storage, freed))
        return key

    def _context(self) -> tuple[str, Optional[int]]:
        node = torch._C._current_autograd_node()
        if node is None or self.phase == "recompute":
            return self.phase, self.region
        return "backward", self.region_of_node(node)

    def _chunk(self, phase: str) -> int:
        return -1 if phase == "step" else self.chunk

    def region_of_node(self, node) -> Optional[int]:
        seq = node._sequence_nr()
        i = bisect.bisect_right(self._region_starts, seq) - 1
        if i < 0:
            return None
        region = self.regions[self._region_by_start[i]]
        return self._region_by_start[i] if region.seq_end is not None and seq < region.seq_end else None

    def next_sequence_nr(self) -> int:
        self.paused = True
        try:
            return torch.ones((), requires_grad=True).mul(1).grad_fn._sequence_nr()
        finally:
            self.paused = False

    # ----------------------------------------------------------------------------------------- regions

    def enter_block(self, model: str, block: int) -> tuple:
        node = torch._C._current_autograd_node()
        saved = (self.phase, self.region)
        if node is not None:  # activation checkpointing recomputes this block inside the backward
            self.phase, self.region = "recompute", self.region_of_node(node)
            return saved
        start = self.next_sequence_nr() if torch.is_grad_enabled() else None
        self.regions.append(Region(model, block, start))
        self.region = len(self.regions) - 1
        self.phase = "forward"
        return saved

    def exit_block(self, saved: tuple) -> None:
        if self.phase == "forward":
            region = self.regions[self.region]
            if region.seq_start is not None:
                region.seq_end = self.next_sequence_nr()
                i = bisect.bisect(self._region_starts, region.seq_start)
                self._region_starts.insert(i, region.seq_start)
                self._region_by_start.insert(i, self.region)
        self.phase, self.region = saved

    @contextlib.contextmanager
    def attention(self, layout: MaskLayout, backend: str, direction: str, inputs):
        outputs: list = []
        self._attention = outputs
        try:
            yield outputs
        finally:
            self._attention = None
        q = inputs[0]
        B, H, L, D = q.shape
        pairs = executed_pairs(layout, backend)
        flops = (4 if direction == "forward" else 10) * B * H * D * pairs  # QK^T, PV; backward also recomputes P
        phase, region = self._context()
        index = len(self.ops)
        reads = {self._id(t): _read_bytes(t) for t in inputs}
        writes = {self._id(t, index): t.numel() * t.element_size() for t in outputs}
        self.ops.append(Op(f"attention.{backend}.{direction}", "attention", flops, reads, writes, q.dtype, phase,
                           region, self.step, self._chunk(phase)))

    # ------------------------------------------------------------------------------------------ dispatch

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.paused or func.namespace in ("prim", "profiler"):  # metadata queries and profiler marks: no kernel
            return out
        index = len(self.ops)
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        if self._attention is not None:  # the outputs of the costed attention kernel: recorded as one op
            return out
        ins = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        in_ids = {self._id(t) for t in ins}
        written_args = [a for a, arg in zip(args, func._schema.arguments)
                        if arg.alias_info is not None and arg.alias_info.is_write]
        name = func.overloadpacket.__name__
        fused = FUSED_GEMMS.get(name) if func.namespace == "egoagent" else None
        mutates = bool(written_args)
        if name in ALLOC_OPS:
            kind = "alloc"
        elif not mutates and outs and all(StorageWeakRef(t.untyped_storage()).cdata in self._live
                                          and self._id(t) in in_ids for t in outs):
            kind = "view"
        elif name in GEMM_OPS or fused is not None:
            kind = "gemm"
        else:
            kind = "pointwise"
        for t in outs:
            self._id(t, index)
        writes = {}
        if kind not in ("view", "alloc"):
            targets = outs + [t for t in tree_flatten(written_args)[0] if isinstance(t, torch.Tensor)]
            seen = set()  # an in-place op returns the tensor it writes: one write, not two
            for t in targets:
                key = self._id(t, index)
                view = (key, t.storage_offset(), tuple(t.shape), tuple(t.stride()))
                if view in seen:
                    continue
                seen.add(view)
                writes[key] = writes.get(key, 0) + t.numel() * t.element_size()
                if self.buffers[key].producer is None:
                    self.buffers[key].producer = index
        reads, read_views = {}, {}
        if fused is not None:
            ins = [args[i] for i in fused[1] if args[i].numel()]
        elif name in WRITE_ONLY_OPS:  # a fill writes its tensor without reading it
            ins = [t for t in ins if all(t is not a for a in written_args)]
        if kind not in ("view", "alloc"):
            for t in ins:
                views = read_views.setdefault(self._id(t), {})
                views[(t.storage_offset(), tuple(t.shape), tuple(t.stride()))] = _read_bytes(t)
            reads = {key: min(sum(v.values()), self.buffers[key].nbytes) for key, v in read_views.items()}
        flops = 0.0
        if fused is not None:
            flops = fused[0](*args)
        elif func.overloadpacket in flop_registry:
            flops = float(flop_registry[func.overloadpacket](*args, **kwargs, out_val=out))
        floating = [t.dtype for t in ins if t.is_floating_point()]
        phase, region = self._context()
        lists = [a for a in args if isinstance(a, (list, tuple)) and a and isinstance(a[0], torch.Tensor)]
        self.ops.append(Op(str(func), kind, flops, reads, writes, floating[0] if floating else torch.float32,
                           phase, region, self.step, self._chunk(phase),
                           tensors=max((len(a) for a in lists), default=1), read_views=read_views))
        return out


# ------------------------------------------------------------------------------------------- the step


def trace_config_overrides(cfg: TrainConfig, folder: str) -> list[tuple[str, object]]:
    """The config traced: two accumulation chunks per step (the second, which adds to the gradients of the first,
    stands for every later one), generated data, no saving, the CUDA default of a fused AdamW; attention through
    sdpa (the costed kernel replaces it; the configured backend prices it), no torch.compile (the cost model fuses
    the blocks instead)."""
    chunks = min(cfg.data.gradient_accumulation, 2)
    chunk = cfg.data.micro_num // cfg.data.gradient_accumulation
    o = [("data.dataset_type", "Generated"), ("data.num_workers", 0), ("data.micro_num", chunk * chunks),
         ("data.gradient_accumulation", chunks), ("loss.grad_accum", chunks), ("loss.batch_size", None),
         ("data.valid_every", 0), ("data.calibration_takes", 0), ("ckpt.enable_save_ckpt", False),
         ("ckpt.load_ckpt_info", None), ("ckpt.load_ckpt_folder", None), ("ckpt.auto_resume", False),
         ("ckpt.save_ckpt_folder", folder), ("monitor.tensorboard_folder", folder), ("monitor.metrics_file", False),
         ("parallel.zero1", 1), ("adam.fused", True)]
    for section in ("model", "teacher"):
        o += [(f"{section}.attn_backend", "sdpa"), (f"{section}.use_flash_attn", False), (f"{section}.compile", False)]
    return o


def _fake_batch(cfg: TrainConfig, n: int) -> dict:
    with torch._subclasses.fake_tensor.unset_fake_temporarily():
        one = default_collate([GeneratedSamples(cfg.data, joint=cfg.loss.is_joint)[0]])
    return {k: torch.empty((n,) + v.shape[1:], dtype=v.dtype) if torch.is_tensor(v) else v * n
            for k, v in one.items()}


def trace_step(cfg: TrainConfig, compiled: bool = False, attn_backend: Optional[str] = None,
               fused_grads: bool = False) -> StepTrace:
    """Trace two optimizer steps of ``cfg`` (micro batch = one accumulation chunk) on fake tensors; see the module
    docstring. ``compiled``: trace the casts torch.compile'd blocks make: a compiled graph casts its weights to the
    autocast dtype at every call (eager autocast casts a trainable weight once per forward and reuses it).
    ``attn_backend``: the kernel to price attention with (default: the config's). ``fused_grads``: with gradient
    accumulation fusion (parallel.grad_accumulation_fusion)."""
    backends = {"model": attn_backend or cfg.model.resolved_attn_backend,
                "teacher": attn_backend or cfg.teacher_model.resolved_attn_backend}
    folder = tempfile.mkdtemp(prefix="roofline_")
    traced = with_overrides(cfg, trace_config_overrides(cfg, folder)
                            + [("parallel.grad_accumulation_fusion", fused_grads)])
    tracer = Tracer()
    ctx = init_distributed(None, device="cpu")
    with FakeTensorMode(allow_non_fake_inputs=True):
        tracer.paused = True  # building the trainer reads values (weight init): not part of the step
        with GPUHostSemantics(tracer), _already_on_the_device():
            trainer = Trainer(traced, ctx)
        tracer.paused = False
        trainer.writer.close()
        meta = trainer.meta
        for name, model in (("student", meta.student), ("teacher", meta.teacher)):
            model.backbone.kernel = CostedAttentionKernel(backends["model" if name == "student" else "teacher"],
                                                          tracer)
            for block in model.backbone.blocks:
                assert isinstance(block, InternLMBlock)
                _hook_block(block, name, tracer)
        ready: dict[str, int] = {}

        def grad_ready(p, pname):
            if tracer.step == 2:
                ready[pname] = len(tracer.ops)

        for pname, p in meta.student.named_parameters():
            if p.requires_grad:
                p.register_post_accumulate_grad_hook(lambda p, pname=pname: grad_ready(p, pname))
        def bucket_ready(names):
            for pname in names:
                grad_ready(None, pname)

        if trainer.plan.fusion is not None:  # the blocks' weights: ready with their bucket
            trainer.plan.fusion.ready_callback = bucket_ready
        chunk_loss = meta.chunk_loss

        def traced_chunk_loss(*args, **kwargs):
            tracer.phase = "forward"
            tracer.chunk += 1
            try:
                return chunk_loss(*args, **kwargs)
            finally:
                tracer.phase = "step"

        meta.chunk_loss = traced_chunk_loss
        batch = _fake_batch(traced, traced.data.micro_num)
        step2_start = 0
        cache = torch.is_autocast_cache_enabled()
        torch.set_autocast_cache_enabled(not compiled)
        with GPUHostSemantics(tracer), tracer, torch.utils.checkpoint.set_checkpoint_early_stop(False):
            for step in (1, 2):
                tracer.step, tracer.chunk = step, -1
                step2_start = len(tracer.ops) if step == 2 else step2_start
                trainer.train_step(batch)
        torch.set_autocast_cache_enabled(cache)
        param_bytes = {n: p.numel() * 4 for n, p in meta.student.named_parameters()}
        teacher_bytes = sum(p.numel() * 4 for p in meta.teacher.parameters())
        buffer_bytes = sum(b.numel() * b.element_size() for b in meta.buffers())
        del trainer, meta, batch
        gc.collect()
    for finalizer in tracer._finalizers:  # storages still alive (held by torch's caches) are not the step's
        finalizer.detach()
    return StepTrace(cfg, tracer.ops, tracer.buffers, tracer.regions, tracer.syncs, ready,
                     param_bytes, teacher_bytes, buffer_bytes, step2_start,
                     traced.data.micro_num // traced.data.gradient_accumulation, traced.data.gradient_accumulation,
                     compiled)


@contextlib.contextmanager
def _already_on_the_device():
    """The trainer moves the meta-architecture to its device; fake tensors are on it already, and torch cannot swap
    fake parameters (FakeTensorMode holds weak references to them), so the move is skipped while it is built."""
    EgoAgentMetaArch.to = lambda self, *args, **kwargs: self
    try:
        yield
    finally:
        del EgoAgentMetaArch.to


def _hook_block(block, model: str, tracer: Tracer) -> None:
    def pre(module, args):
        module._trace_saved = tracer.enter_block(model, module.layer_idx)

    def post(module, args, out):
        tracer.exit_block(module._trace_saved)

    block.register_forward_pre_hook(pre)
    block.register_forward_hook(post)
