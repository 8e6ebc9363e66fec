"""The roofline estimate of one training step per GPU, from a fake-tensor trace (trace.py): kernels, GEMM /
element-wise / attention / communication time, host-side dispatch, peak memory, and the MFU ceiling they allow.

These are estimates, not measurements. Every kernel takes the longest of its FLOPs at a fixed share of the GPU's
dense peak for its dtype, its bytes at a fixed share of the memory bandwidth, and a floor; the CPU issues kernels
asynchronously, so between two host syncs the step takes the longer of the GPU's and the CPU's time. The constants
(``Assumptions``) are the same for every setting compared; what a setting changes is the work itself:

- torch.compile of the transformer blocks (``Settings.compile``): inside each block call, the element-wise ops
  between two GEMM/attention kernels become one fused kernel that reads what comes from outside the group and
  writes what is used outside it; an intermediate the backward needs and the group can recompute from its inputs is
  not saved (the min-cut partitioner's rematerialisation) and its memory is not held. Outside the blocks (heads,
  losses, optimizer) stays eager.
- Activation checkpointing (``Settings.checkpoint``, the fraction of student blocks recomputed): traced as it runs.
- Data parallelism (``Settings.parallel``): DDP's gradient buckets all-reduced as their gradients become ready in
  the last chunk's backward (in fp32, or with the low-precision hook: all-to-all and all-gather in the run's dtype,
  summed in fp32); ZeRO-1's parameter broadcast after the optimizer step; FSDP2's all-gathers and reduce-scatters
  per block, overlapped with the compute of the same phase. Model state per GPU follows the mode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from internlm.config import TrainConfig
from internlm.model.flops import sample_cost
from internlm.monitor.gpus import GPUSpec

from .trace import Op, StepTrace

GIB = 2**30


@dataclass(frozen=True)
class Assumptions:
    """The model's constants (documented guesses from published kernel benchmarks, not fitted to anything)."""

    gemm_efficiency: float = 0.70  # cuBLAS on large fp16/bf16 GEMMs: ~70% of the dense peak
    attention_efficiency: float = 0.50  # FlashAttention-2 / FlexAttention, head dim 128, forward and backward
    bandwidth_efficiency: float = 0.85  # of the HBM bandwidth, for element-wise kernels
    kernel_floor_us: float = 3.0  # the shortest kernel (launch to launch on the GPU)
    eager_op_us: float = 10.0  # CPU time of one aten op called from Python, autograd recording included
    engine_op_us: float = 5.0  # CPU time of one aten op run by the autograd engine (backward)
    view_op_us: float = 3.0  # CPU time of a view / allocation (no kernel)
    compiled_call_us: float = 40.0  # CPU time of calling one compiled block (guards, autograd wrapper)
    launch_us: float = 5.0  # CPU time to launch one kernel of compiled code
    foreach_tensors_per_kernel: int = 110  # multi_tensor_apply: tensors per launch of a foreach / fused optimizer op
    collective_latency_us: float = 30.0  # per collective call (NCCL, small messages)
    network_efficiency: float = 0.80  # of the adapters' line rate (GPUSpec.nic_gbs)
    pcie_gbs: float = 20.0  # bus bandwidth inside a node without NVLink
    gpus_per_node: int = 8
    memory_headroom: float = 0.92  # the share of the card the caching allocator can fill (fragmentation, context)


@dataclass(frozen=True)
class Settings:
    compile: bool = False
    checkpoint: float = 1.0  # fraction of the student's blocks recomputed (traced: part of the trace)
    parallel: str = "zero1"  # single | ddp | zero1 | fsdp
    world: int = 32  # GPUs
    bucket_mb: float = 512.0  # DDP bucket (fp32 gradient MB)
    low_precision_comm: bool = False  # DDP hook / FSDP2 MixedPrecisionPolicy in the run's dtype
    bucket_view: bool = False  # DDP gradient_as_bucket_view (no second copy of the gradients)
    fused_grads: bool = False  # parallel.grad_accumulation_fusion (traced: part of the trace)


@dataclass
class Estimate:
    settings: Settings
    gpu: str
    kernels: int  # GPU kernels per optimizer step
    gemm_ms: float
    elementwise_ms: float
    attention_ms: float
    optimizer_ms: float  # the step's tail: clip, AdamW, EMA, centres (included in elementwise_ms too)
    gpu_ms: float  # all kernels
    cpu_ms: float  # host dispatch
    comm_ms: float  # communication time
    comm_exposed_ms: float  # the part not hidden behind compute
    step_ms: float
    model_tflop: float  # model FLOPs per GPU per step (MFU's numerator)
    executed_tflop: float  # FLOPs the kernels run (recompute, masked tiles and the attention backward's extra)
    mfu: float  # the ceiling: model FLOPs / (step time x peak)
    host_syncs: int
    memory: dict = field(default_factory=dict)  # per GPU: model_state_gib, trace_peak_gib, total_gib, fits

    def row(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "settings"} | {"settings": self.settings.__dict__}


# ------------------------------------------------------------------------------------------------ kernels


def _peak(gpu: GPUSpec, op: Op, cfg: TrainConfig) -> float:
    import torch

    if op.dtype in (torch.float16, torch.bfloat16):
        return gpu.tensor16 * 1e12
    return (gpu.tf32 if cfg.model.dtype == "torch.tf32" else gpu.fp32) * 1e12


def _kernels(op: Op, a: Assumptions) -> int:
    if op.kind in ("view", "alloc"):
        return 0
    return max(1, math.ceil(op.tensors / a.foreach_tensors_per_kernel))


def _gpu_s(op: Op, gpu: GPUSpec, cfg: TrainConfig, a: Assumptions) -> float:
    if op.kind in ("view", "alloc"):
        return 0.0
    memory = (sum(op.reads.values()) + sum(op.writes.values())) / (a.bandwidth_efficiency * gpu.hbm_gbs * 1e9)
    compute = 0.0
    if op.kind == "gemm":
        compute = op.flops / (a.gemm_efficiency * _peak(gpu, op, cfg))
    elif op.kind == "attention":
        compute = op.flops / (a.attention_efficiency * _peak(gpu, op, cfg))
    return max(memory, compute, _kernels(op, a) * a.kernel_floor_us * 1e-6)


def _cpu_s(op: Op, a: Assumptions) -> float:
    if op.kind in ("view", "alloc"):
        return a.view_op_us * 1e-6
    return (a.engine_op_us if op.phase == "backward" else a.eager_op_us) * 1e-6


REDUCTIONS = {"sum", "mean", "amax", "amin", "max", "min", "var", "std", "norm", "linalg_vector_norm", "_softmax",
              "_log_softmax", "logsumexp", "prod", "_log_softmax_backward_data", "_softmax_backward_data"}


@dataclass
class _Group:
    """Fusible ops of one compiled block call between two GEMM / attention kernels."""

    ops: list[int]
    phase: str
    region: int
    reads: dict = field(default_factory=dict)
    writes: dict = field(default_factory=dict)
    kernels: int = 1


@dataclass
class _Costed:
    """Per op: its GPU seconds, CPU seconds and kernels after fusion (fused ops carry their group's cost on the
    group's last op, zero on the others)."""

    gpu_s: list[float]
    cpu_s: list[float]
    kernels: list[int]
    removed: set  # buffers that never exist when compiled (fused intermediates, rematerialised saved tensors)
    extended: dict  # buffer -> op index it must now live until (rematerialisation sources)


def fusion_groups(trace: StepTrace, members: list[int]) -> list[list[int]]:
    """Inductor-style fusion of one compiled call's element-wise ops: a consumer joins its producer's kernel unless
    a GEMM / attention kernel lies between them (depends on one and feeds the other). Returns the op indices of
    each fused kernel, in order."""
    writer: dict[int, int] = {}
    parents: dict[int, set] = {}
    for i in members:
        op = trace.ops[i]
        parents[i] = {writer[b] for b in op.reads if b in writer}
        for b in op.writes:
            writer[b] = i
    extern = {i for i in members if trace.ops[i].kind in ("gemm", "attention")}
    anc_ext: dict[int, set] = {}  # extern ops each op depends on
    for i in members:
        anc_ext[i] = set().union(*[anc_ext[p] | ({p} & extern) for p in parents[i]]) if parents[i] else set()
    desc_ext: dict[int, set] = {i: set() for i in members}  # extern ops depending on each op
    for i in reversed(members):
        for p in parents[i]:
            desc_ext[p] |= desc_ext[i] | ({i} & extern)
    root = {i: i for i in members if trace.ops[i].kind == "pointwise"}
    info = {i: (anc_ext[i], desc_ext[i]) for i in root}

    def find(i):
        while root[i] != i:
            root[i] = root[root[i]]
            i = root[i]
        return i

    # vertical fusion (a consumer into its producer's kernel), then horizontal (ops of the same size reading the same
    # buffer, e.g. the two halves of a SwiGLU backward or the rotary of q and k)
    readers_of: dict[int, list[int]] = {}
    for i in root:
        for b in trace.ops[i].reads:
            readers_of.setdefault(b, []).append(i)
    pairs = [(p, i) for i in root for p in sorted(parents[i]) if p in root]
    size = {i: sum(trace.ops[i].writes.values()) for i in root}
    pairs += [(r[0], j) for r in readers_of.values() for j in r[1:] if size[j] == size[r[0]]]
    for p, i in pairs:
        a, b = find(p), find(i)
        if a == b:
            continue
        (anc_a, desc_a), (anc_b, desc_b) = info[a], info[b]
        if desc_a & anc_b or desc_b & anc_a:
            continue  # a GEMM between them: separate kernels
        root[b] = a
        info[a] = (anc_a | anc_b, desc_a | desc_b)
    out: dict[int, list[int]] = {}
    for i in root:
        out.setdefault(find(i), []).append(i)
    return sorted((sorted(g) for g in out.values()), key=lambda g: g[0])


def _cost_ops(trace: StepTrace, ops: list[tuple[int, Op]], gpu: GPUSpec, compile_blocks: bool,
              a: Assumptions) -> _Costed:
    cfg = trace.cfg
    n = len(trace.ops)
    gpu_s, cpu_s, kernels = [0.0] * n, [0.0] * n, [0] * n
    for i, op in ops:
        gpu_s[i], cpu_s[i], kernels[i] = _gpu_s(op, gpu, cfg, a), _cpu_s(op, a), _kernels(op, a)
    removed, extended = set(), {}
    if not compile_blocks:
        return _Costed(gpu_s, cpu_s, kernels, removed, extended)
    readers: dict[int, list[int]] = {}
    for i, op in ops:
        for b in op.reads:
            readers.setdefault(b, []).append(i)
    calls: dict[tuple[int, str], list[int]] = {}
    for i, op in ops:
        if op.region is not None:
            calls.setdefault((op.region, op.phase), []).append(i)
    groups: list[_Group] = []
    for (region, phase), members in calls.items():
        groups += [_Group(ops_, phase, region) for ops_ in fusion_groups(trace, members)]
    remat: dict[int, set] = {}  # rematerialised buffer -> the forward group's inputs it is recomputed from
    for g in sorted(groups, key=lambda g: g.phase != "forward"):  # forward groups first: they decide the remat
        members = set(g.ops)
        produced = {b for i in g.ops for b in trace.ops[i].writes if trace.buffers[b].producer in members}
        views: dict[int, dict] = {}  # what the fused kernel reads: each distinct view of a buffer once
        for i in g.ops:
            for b, nbytes in trace.ops[i].reads.items():
                if b in produced:
                    continue
                for src in remat.get(b, {b}):
                    if src == b:
                        views.setdefault(src, {}).update(trace.ops[i].read_views.get(b) or {(): nbytes})
                    else:  # recomputed from a forward input: read whole
                        views.setdefault(src, {})[None] = trace.buffers[src].nbytes
        g.reads = {src: min(sum(v.values()), trace.buffers[src].nbytes) for src, v in views.items()}
        for i in g.ops:
            for b, nbytes in trace.ops[i].writes.items():
                outside = [r for r in readers.get(b, []) if r not in members]
                alive_after = trace.buffers[b].free is None
                if b in produced and not outside and not alive_after:
                    removed.add(b)  # lives in registers only
                    continue
                if b in produced and outside and g.phase == "forward" and not alive_after and all(
                        trace.ops[r].region == g.region and trace.ops[r].phase in ("backward", "recompute")
                        for r in outside):
                    remat[b] = set(g.reads)  # saved for the backward, recomputed there from the group's inputs
                    removed.add(b)
                    last = max(outside)
                    for src in g.reads:
                        extended[src] = max(extended.get(src, 0), last)
                    continue
                g.writes[b] = max(g.writes.get(b, 0), nbytes)
        shapes = {tuple(trace.ops[i].writes.values()) for i in g.ops
                  if trace.ops[i].name.split(".")[1] in REDUCTIONS}
        g.kernels = max(1, len(shapes))
        last = g.ops[-1]
        total = sum(g.reads.values()) + sum(g.writes.values())
        for i in g.ops:
            gpu_s[i], cpu_s[i], kernels[i] = 0.0, 0.0, 0
        gpu_s[last] = max(total / (a.bandwidth_efficiency * gpu.hbm_gbs * 1e9), g.kernels * a.kernel_floor_us * 1e-6)
        kernels[last] = g.kernels
    # compiled calls: no Python per op; one call overhead per block call and a launch per kernel
    for members in calls.values():
        for i in members:
            op = trace.ops[i]
            cpu_s[i] = kernels[i] * a.launch_us * 1e-6
            if op.kind in ("view", "alloc"):
                cpu_s[i] = 0.0
        cpu_s[members[0]] += a.compiled_call_us * 1e-6
    return _Costed(gpu_s, cpu_s, kernels, removed, extended)


# ------------------------------------------------------------------------------------------------ memory


def _memory(trace: StepTrace, costed: _Costed, settings: Settings, gpu: GPUSpec, a: Assumptions) -> dict:
    """Peak bytes per GPU during step 2 (the optimizer state exists): the trace's live buffers (activations, casts,
    gradients, optimizer state) at their worst moment, the second chunk's gradients adding to the first's, plus
    parameters and teacher, adjusted for the parallel mode."""
    start = trace.step2_start
    end = len(trace.ops)
    delta = [0] * (end - start + 1)
    base = 0
    for key, buf in trace.buffers.items():
        if key in costed.removed:
            continue
        free = buf.free if buf.free is not None else end
        free = max(free, costed.extended.get(key, -1) + 1)
        if buf.alloc < 0 or free <= start or buf.alloc >= end:  # parameters are counted apart
            continue
        if buf.alloc < start:
            base += buf.nbytes
        else:
            delta[buf.alloc - start] += buf.nbytes
        if free < end:
            delta[free - start] -= buf.nbytes
    live, peak = base, base
    for t in range(start, end):
        live += delta[t - start]
        peak = max(peak, live)
    params = sum(trace.param_bytes.values())
    trainable = sum(trace.param_bytes[n] for n in trace.param_ready)
    n = settings.world
    adam = 2 * trainable  # exp_avg, exp_avg_sq (fp32) per trainable parameter
    state = params + trace.teacher_bytes + trace.buffer_bytes
    adjust = 0
    if settings.parallel in ("ddp", "zero1") and not settings.bucket_view:
        adjust += trainable  # DDP's bucket buffers: a second copy of the gradients
    if settings.parallel == "zero1":
        adjust -= adam * (n - 1) / n
    if settings.parallel == "fsdp":
        blocks = trace.cfg.model.num_layers
        adjust -= (params + trace.teacher_bytes + trainable + adam) * (n - 1) / n
        adjust += 2 * (params / max(blocks, 1))  # the gathered block and the prefetched next one
    total = state + peak + adjust
    usable = gpu.memory_bytes * a.memory_headroom
    return {"model_state_gib": (state + adjust + trainable + adam) / GIB, "trace_peak_gib": peak / GIB,
            "total_gib": total / GIB, "capacity_gib": gpu.memory_bytes / GIB, "usable_gib": usable / GIB,
            "fits": total <= usable}


# ----------------------------------------------------------------------------------------- communication


class Network:
    """Collectives of ``world`` GPUs in nodes of ``gpus_per_node``, costed the way NCCL runs them on such a cluster:
    the node's share over NVLink, the rest over one network adapter per GPU (a ring across nodes carries 1/g of the
    data per adapter, g = GPUs per node)."""

    def __init__(self, gpu: GPUSpec, world: int, a: Assumptions):
        self.g = min(world, a.gpus_per_node)
        self.nodes = math.ceil(world / self.g)
        self.intra = (gpu.nvlink_gbs or a.pcie_gbs) * 1e9
        self.inter = gpu.nic_gbs * a.network_efficiency * 1e9
        self.latency = a.collective_latency_us * 1e-6

    def _ring(self, nbytes: float, passes: int) -> float:
        """``passes`` = 1 for reduce-scatter / all-gather, 2 for all-reduce."""
        g, n = self.g, self.nodes
        return (passes * (g - 1) / g * nbytes / self.intra + passes * (n - 1) / n * nbytes / g / self.inter
                + passes * self.latency)

    def all_reduce(self, nbytes: float) -> float:
        return self._ring(nbytes, 2)

    def all_gather(self, nbytes: float) -> float:
        """nbytes: the gathered total (also a reduce-scatter of nbytes)."""
        return self._ring(nbytes, 1)

    def reduce_low_precision(self, nbytes: float) -> float:
        """The low-precision gradient hook (internlm/parallel/comm_hooks.py) on an fp32 bucket of nbytes: fp32
        reduce-scatter and all-gather inside the node; between nodes an all-to-all and an all-gather of the node's
        shard at half the size."""
        g, n = self.g, self.nodes
        intra = 2 * (g - 1) / g * nbytes / self.intra
        inter = 2 * (n - 1) / n * (nbytes / 2) / g / self.inter if n > 1 else 0.0
        return intra + inter + 4 * self.latency


def _ddp_comm(trace: StepTrace, costed: _Costed, settings: Settings, net: Network,
              backward_scale: float) -> tuple[float, float]:
    """(communication seconds, seconds exposed after the last chunk's backward) of DDP's gradient buckets."""
    last = max(op.chunk for _, op in trace.step2_ops())
    backward = [i for i, op in trace.step2_ops() if op.phase in ("backward", "recompute") and op.chunk == last]
    if not backward or settings.world <= 1:
        return 0.0, 0.0
    clock, at = 0.0, {}
    for i in backward:
        clock += costed.gpu_s[i] * backward_scale
        at[i] = clock
    backward_end = clock
    order = sorted(trace.param_ready, key=lambda p: trace.param_ready[p])
    buckets, current, cap = [], [], 1 * 2**20  # DDP's first bucket holds 1 MB
    for p in order:
        current.append(p)
        if sum(trace.param_bytes[q] for q in current) >= cap:
            buckets.append(current)
            current, cap = [], settings.bucket_mb * 2**20
    if current:
        buckets.append(current)
    low = settings.low_precision_comm and trace.cfg.model.dtype != "torch.float32"
    link_free, total = 0.0, 0.0
    for bucket in buckets:
        ready = max(at.get(trace.param_ready[p], backward_end) for p in bucket)
        nbytes = sum(trace.param_bytes[p] for p in bucket)
        seconds = net.reduce_low_precision(nbytes) if low else net.all_reduce(nbytes)
        link_free = max(link_free, ready) + seconds
        total += seconds
    return total, max(0.0, link_free - backward_end)


def _zero1_broadcast_s(trace: StepTrace, settings: Settings, net: Network) -> float:
    """ZeroRedundancyOptimizer: every rank broadcasts its updated partition (fp32) after the step, one broadcast
    per rank: an all-gather of the parameters, not overlapped."""
    return net.all_gather(sum(trace.param_bytes.values())) + (settings.world - 1) * net.latency


def _fsdp_comm(trace: StepTrace, phase_gpu_s: dict, settings: Settings, net: Network) -> tuple[float, float]:
    """FSDP2: the student's and teacher's blocks all-gathered in the forward, the student's again in the backward
    (in the run's dtype with the MixedPrecisionPolicy), gradients reduce-scattered in fp32 in the last chunk; each
    overlapped with the compute of its phase by FSDP's prefetching."""
    low = settings.low_precision_comm and trace.cfg.model.dtype != "torch.float32"
    params = sum(trace.param_bytes.values())
    gathered = params / (2 if low else 1)
    teacher = trace.teacher_bytes / (2 if low else 1)
    calls = (trace.cfg.model.num_layers + 1) * net.latency
    accum = trace.cfg.data.gradient_accumulation
    forward = net.all_gather(gathered) + net.all_gather(teacher) + 2 * calls
    backward = net.all_gather(gathered) + calls
    reduce = net.all_gather(params) + calls
    exposed = accum * max(0.0, forward - phase_gpu_s["forward"]) + (accum - 1) * max(
        0.0, backward - phase_gpu_s["backward"]) + max(0.0, backward + reduce - phase_gpu_s["backward"])
    return accum * (forward + backward) + reduce, exposed


# -------------------------------------------------------------------------------------------- estimate


def estimate(trace: StepTrace, gpu: GPUSpec, settings: Settings, a: Assumptions = Assumptions()) -> Estimate:
    """The step of trace.cfg (``accum`` chunks of the traced one and one tail) under ``settings`` on ``gpu``."""
    cfg = trace.cfg
    accum = cfg.data.gradient_accumulation
    ops = trace.step2_ops()
    costed = _cost_ops(trace, ops, gpu, settings.compile, a)
    # the first traced chunk once; the second (which accumulates into the gradients) for every later chunk
    repeat = {i: (1 if op.chunk <= 0 else accum - 1) for i, op in ops}
    chunk = [i for i, op in ops if op.chunk >= 0]
    tail = [i for i, op in ops if op.chunk < 0]
    last_chunk = max((op.chunk for _, op in ops), default=0)
    sync_at = sorted({i for i, _, step, _ in trace.syncs if step == 2})
    # segments between host syncs: each takes the longer of the GPU's and the CPU's time
    step_s = gpu_total = cpu_total = 0.0
    bounds = [trace.step2_start] + sync_at + [len(trace.ops)]
    for lo, hi in zip(bounds, bounds[1:]):
        g = sum(costed.gpu_s[i] * repeat.get(i, 0) for i in range(lo, hi))
        c = sum(costed.cpu_s[i] * repeat.get(i, 0) for i in range(lo, hi))
        step_s += max(g, c)
        gpu_total += g
        cpu_total += c
    by_kind = {"gemm": 0.0, "attention": 0.0, "pointwise": 0.0}
    for i, op in ops:
        if op.kind in by_kind:
            by_kind[op.kind] += costed.gpu_s[i] * repeat[i]
    backward = [i for i in chunk
                if trace.ops[i].phase in ("backward", "recompute") and trace.ops[i].chunk == last_chunk]
    g_bwd = sum(costed.gpu_s[i] for i in backward)
    c_bwd = sum(costed.cpu_s[i] for i in backward)
    comm_s = exposed_s = 0.0
    net = Network(gpu, settings.world, a)
    if settings.parallel in ("ddp", "zero1"):
        comm_s, exposed_s = _ddp_comm(trace, costed, settings, net, max(g_bwd, c_bwd) / max(g_bwd, 1e-12))
        if settings.parallel == "zero1":
            broadcast = _zero1_broadcast_s(trace, settings, net)
            comm_s += broadcast
            exposed_s += broadcast
    elif settings.parallel == "fsdp":
        phase_s = {"forward": sum(costed.gpu_s[i] for i in chunk if trace.ops[i].phase == "forward"
                                  and trace.ops[i].chunk == last_chunk),
                   "backward": g_bwd}
        comm_s, exposed_s = _fsdp_comm(trace, phase_s, settings, net)
    step_s += exposed_s
    model_flops = sample_cost(cfg.model, cfg.sample_shapes()).train_flops * cfg.data.micro_num
    executed = sum(op.flops * repeat[i] for i, op in ops)
    return Estimate(
        settings=settings, gpu=gpu.key, kernels=sum(costed.kernels[i] * repeat[i] for i, _ in ops),
        gemm_ms=1e3 * by_kind["gemm"], elementwise_ms=1e3 * by_kind["pointwise"],
        attention_ms=1e3 * by_kind["attention"], optimizer_ms=1e3 * sum(costed.gpu_s[i] for i in tail),
        gpu_ms=1e3 * gpu_total, cpu_ms=1e3 * cpu_total, comm_ms=1e3 * comm_s, comm_exposed_ms=1e3 * exposed_s,
        step_ms=1e3 * step_s, model_tflop=model_flops / 1e12, executed_tflop=executed / 1e12,
        mfu=model_flops / (step_s * gpu.peak_tflops(cfg.model.dtype) * 1e12),
        host_syncs=sum((1 if c <= 0 else accum - 1) for _, _, step, c in trace.syncs if step == 2),
        memory=_memory(trace, costed, settings, gpu, a))

