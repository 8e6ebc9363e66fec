"""MFU peaks by exact GPU name, and the roofline estimate (internlm/perf): its trace against the analytic FLOP
count, the fusion of compiled blocks, recomputation and memory, on a tiny config on fake tensors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from train_helpers import tiny_config

from internlm.config import with_overrides
from internlm.model import EgoAgent
from internlm.model.attention import MaskLayout, joint_layout
from internlm.model.flops import allowed_pairs, sample_cost
from internlm.monitor.gpus import gpu_by_device_name, gpu_by_key, peak_tflops
from internlm.perf.roofline import Assumptions, Network, Settings, estimate, fusion_groups
from internlm.perf.trace import GPUHostSemantics, Tracer, tile_pairs, trace_step


@pytest.mark.parametrize("name, dtype, want", [
    ("NVIDIA H100 80GB HBM3", "torch.bfloat16", 989.4),  # SXM5
    ("NVIDIA H100 PCIe", "torch.float16", 756.5),
    ("NVIDIA H100 NVL", "torch.bfloat16", 835.5),
    ("NVIDIA H200", "torch.bfloat16", 989.4),
    ("NVIDIA H200 NVL", "torch.bfloat16", 835.5),
    ("NVIDIA A100-SXM4-40GB", "torch.float16", 312.0),
    ("NVIDIA A100 80GB PCIe", "torch.bfloat16", 312.0),
    ("NVIDIA H100 80GB HBM3", "torch.float32", 66.9),  # fp32 runs against the fp32 peak
    ("NVIDIA A100-SXM4-80GB", "torch.tf32", 156.0),
    ("NVIDIA H20", "torch.bfloat16", None),  # not an H200: unknown, no MFU rather than a wrong one
    ("NVIDIA GeForce RTX 3060", "torch.float16", None),
])
def test_peak_flops_by_exact_device_name_and_dtype(name, dtype, want):
    assert peak_tflops(name, dtype) == want


def test_gpu_keys_and_memory():
    assert gpu_by_key("a100-40gb").memory_gb == 40 and gpu_by_key("a100-80gb").hbm_gbs == 2039.0
    assert gpu_by_device_name("NVIDIA A100-SXM4-80GB").key == "a100-sxm-80gb"
    with pytest.raises(ValueError, match="unknown GPU type 'h300'"):
        gpu_by_key("h300")


def test_attention_tiles_match_a_brute_force_count():
    layout = joint_layout(4, 196, True)  # the paper's joint clip: 796 tokens, block-causal
    dense = layout.dense("cpu")
    tile = 128
    brute = 0
    for q0 in range(0, layout.seq_len, tile):
        for k0 in range(0, layout.seq_len, tile):
            block = dense[q0:q0 + tile, k0:k0 + tile]
            brute += block.numel() if block.any() else 0
    assert tile_pairs(layout, tile) == brute
    assert allowed_pairs(layout) < brute < layout.seq_len ** 2
    assert tile_pairs(MaskLayout("full", 197)) == 197 ** 2


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    folder = tmp_path_factory.mktemp("roofline")
    cfg = tiny_config(2, folder, **{"model.dtype": "torch.bfloat16", "teacher.dtype": "torch.bfloat16"})
    out = {(0.0, True): trace_step(cfg, compiled=True)}
    out[(1.0, True)] = trace_step(with_overrides(cfg, [("model.checkpoint", 1.0)]), compiled=True)
    return cfg, out


def test_traced_gemm_flops_are_the_analytic_count(traces):
    """The trace's GEMMs (student forward and backward, teacher forward) plus the mask-aware attention are the
    analytic model FLOPs of the step; with recomputation the executed FLOPs grow by the blocks' forward."""
    cfg, by = traces
    trace = by[(0.0, True)]
    gpu = gpu_by_key("h100-sxm")
    plain = estimate(trace, gpu, Settings(compile=True, checkpoint=0.0, parallel="single", world=1))
    want = sample_cost(cfg.model, cfg.sample_shapes()).train_flops * cfg.data.micro_num
    attention = sum(op.flops for _, op in trace.step2_ops() if op.kind == "attention")
    # attention as executed (tiles, the backward's recompute of P) replaces the analytic 3x mask-aware count
    assert plain.model_tflop * 1e12 == pytest.approx(want)
    gemm = sum(op.flops * (1 if op.chunk <= 0 else cfg.data.gradient_accumulation - 1)
               for _, op in trace.step2_ops() if op.kind == "gemm")
    analytic_gemm = want - _analytic_attention(cfg)
    assert gemm == pytest.approx(analytic_gemm, rel=0.01)
    assert attention > 0
    recomputed = estimate(by[(1.0, True)], gpu, Settings(compile=True, checkpoint=1.0, parallel="single", world=1))
    assert recomputed.executed_tflop > plain.executed_tflop * 1.1
    assert recomputed.gemm_ms > plain.gemm_ms
    assert recomputed.memory["trace_peak_gib"] < plain.memory["trace_peak_gib"]


def _analytic_attention(cfg) -> float:
    """sample_cost's attention FLOPs (3x the forward's 4 d per allowed pair, teacher forward 1x) for the batch."""
    from internlm.model.flops import view_layouts

    d, nl = cfg.model.hidden_size, cfg.model.num_layers
    g, loc, p, joint, *_ = view_layouts(cfg.model, cfg.sample_shapes())
    n_local = cfg.data.local_crops_number
    student = 2 * allowed_pairs(g) + n_local * allowed_pairs(loc) + allowed_pairs(joint)
    teacher = 2 * allowed_pairs(g) + cfg.data.clip_steps * allowed_pairs(p)
    return 4 * d * nl * (3 * student + teacher) * cfg.data.micro_num


def test_compiled_blocks_fuse_norm_and_rotary(traces):
    """A compiled block's forward is five element-wise kernels between its GEMMs and attention (RMSNorm; rotary of
    q and k; residual + RMSNorm; SwiGLU; residual) and the estimate of the step drops kernels and element-wise
    time; eager runs every upcast, multiply and add on its own."""
    cfg, by = traces
    trace = by[(0.0, True)]
    region = [r for r, x in enumerate(trace.regions) if x.model == "student" and x.seq_start is not None][-1]
    members = [i for i, op in trace.step2_ops() if op.region == region and op.phase == "forward"]
    eager_kernels = [i for i in members if trace.ops[i].kind == "pointwise"]
    assert len(fusion_groups(trace, members)) == 5 < len(eager_kernels)
    gpu = gpu_by_key("h100-sxm")
    eager = estimate(trace, gpu, Settings(compile=False, checkpoint=0.0, parallel="single", world=1))
    fused = estimate(trace, gpu, Settings(compile=True, checkpoint=0.0, parallel="single", world=1))
    assert fused.kernels < 0.7 * eager.kernels and fused.elementwise_ms < eager.elementwise_ms
    assert fused.gemm_ms == eager.gemm_ms
    assert fused.memory["trace_peak_gib"] < eager.memory["trace_peak_gib"]  # fused intermediates never exist


def test_parallel_modes_move_memory_and_bytes(traces):
    cfg, by = traces
    trace = by[(0.0, True)]
    gpu = gpu_by_key("h100-sxm")
    base = dict(compile=True, checkpoint=0.0, world=64, bucket_view=True)
    ddp = estimate(trace, gpu, Settings(parallel="ddp", **base))
    zero1 = estimate(trace, gpu, Settings(parallel="zero1", **base))
    assert zero1.memory["total_gib"] < ddp.memory["total_gib"]
    assert zero1.comm_ms > ddp.comm_ms  # the parameter broadcast
    one_gb = 1e9  # a 1 GB bucket on 8 nodes: half the bytes between nodes, the node's share in fp32 either way
    net = Network(gpu, 64, Assumptions())
    assert net.reduce_low_precision(one_gb) < 0.75 * net.all_reduce(one_gb)
    single_node = Network(gpu, 8, Assumptions())
    assert single_node.reduce_low_precision(one_gb) == pytest.approx(single_node.all_reduce(one_gb), rel=0.03)


def test_pose_token_keeps_the_compute_dtype_under_cuda_autocast():
    """CUDA autocast runs LayerNorm in fp32 (emulated on the CPU by GPUHostSemantics): the action projector's token
    goes back to the compute dtype, so the joint sequence (and its residual stream) stays fp16/bf16."""
    from train_helpers import DEMO

    from internlm.config import load_config

    cfg = load_config(DEMO[2]).model
    torch.manual_seed(0)
    model = EgoAgent(cfg, joint=True)
    seen = []
    model.backbone.register_forward_pre_hook(lambda m, args: seen.append(args[0].dtype))
    frames = torch.randn(1, 4, 3, 32, 32)
    poses = torch.randn(1, 4, 4, 5, 17)
    with GPUHostSemantics(Tracer()), torch.autocast("cpu", dtype=torch.bfloat16):
        assert F.layer_norm(torch.ones(2, 4, dtype=torch.bfloat16), (4,)).dtype == torch.float32  # CUDA's policy
        model.forward_joint(frames, poses, with_logits=False)
    assert seen == [torch.bfloat16]


def test_one_host_sync_per_training_step(traces):
    """The trainer's step reads the device once (the gradient norm, with the statistics and flags it needs): no
    torch.tensor(list, device=...), .item() or float() elsewhere in the chunks or the step."""
    _, by = traces
    syncs = [(what, chunk) for _, what, step, chunk in by[(0.0, True)].syncs if step == 2]
    assert syncs == [("item", -1)], syncs


def test_in_place_and_foreach_ops_write_each_tensor_once():
    """Traffic of the ops outside the compiled blocks (gradient accumulation, optimizer, EMA): an in-place op
    returns the tensor it writes, which is one write; a foreach op over views of one bucket writes each view."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    tracer = Tracer()
    with FakeTensorMode(allow_non_fake_inputs=True):
        grad, new = torch.empty(1000), torch.empty(1000)
        bucket = torch.empty(3000)
        views = [bucket[i * 1000:(i + 1) * 1000] for i in range(3)]
        with tracer:
            grad.add_(new)  # gradient accumulation: reads both, writes one
            torch._foreach_mul_(views, 0.5)  # three views of one storage, each written once
            out = grad + new  # out of place: one new buffer
            qk = views[0] * views[1]  # two views of one storage (the q and k of one qkv output): both read
            square = views[2] * views[2]  # one view read twice by the kernel: read once
            bucket.zero_()  # a fill: written, not read
    add, mul, plus, prod, sq, zero = [op for op in tracer.ops if op.kind == "pointwise"]
    assert sum(zero.reads.values()) == 0 and sum(zero.writes.values()) == 12000
    assert sum(add.reads.values()) == 8000 and sum(add.writes.values()) == 4000
    assert sum(mul.writes.values()) == 12000 and len(mul.writes) == 1
    assert sum(mul.reads.values()) == 12000
    assert sum(plus.writes.values()) == 4000 and out.shape == (1000,)
    assert sum(prod.reads.values()) == 8000 and sum(sq.reads.values()) == 4000 and qk.shape == square.shape


def test_fused_gradient_accumulation_in_the_trace(tmp_path):
    """With parallel.grad_accumulation_fusion the trace prices the fused weight-gradient GEMMs as the same FLOPs
    (the product is added into the fp32 buffer inside the GEMM) and drops the gradient casts and additions: less
    element-wise time, the same GEMM time, every trainable parameter still ready for DDP's buckets."""
    cfg = tiny_config(2, tmp_path, **{"model.dtype": "torch.bfloat16", "teacher.dtype": "torch.bfloat16"})
    plain, fused = trace_step(cfg, compiled=True), trace_step(cfg, compiled=True, fused_grads=True)
    flops = [sum(op.flops for _, op in t.step2_ops() if op.kind == "gemm") for t in (plain, fused)]
    assert flops[1] == pytest.approx(flops[0], rel=1e-9)
    assert {op.name for _, op in fused.step2_ops()} >= {"egoagent.linear_accumulating_grad.default",
                                                        "egoagent.accumulate_weight_grad_.default"}
    assert fused.param_ready.keys() == plain.param_ready.keys()
    gpu = gpu_by_key("h100-sxm")
    s = dict(compile=True, checkpoint=0.0, parallel="ddp", world=16, bucket_view=True)
    e_plain = estimate(plain, gpu, Settings(**s))
    e_fused = estimate(fused, gpu, Settings(**s, fused_grads=True))
    assert e_fused.elementwise_ms < e_plain.elementwise_ms and e_fused.gemm_ms == pytest.approx(e_plain.gemm_ms)
    casts = [sum(1 for _, op in t.step2_ops() if op.name == "aten._to_copy.default" and op.phase == "backward"
                 and op.region is None) for t in (plain, fused)]
    assert casts[1] < casts[0]  # the weight gradients' fp16 -> fp32 casts are gone
