"""Analytic FLOP counts of EgoAgent (a multiply-add = 2 FLOPs), for throughput, TFLOP/s and MFU.

Attention counts the (query, key) pairs the mask allows (full: L^2, causal: L(L+1)/2, block-causal: causal plus
the pairs inside each image block), i.e. the work a mask-aware kernel has to do. Training a module costs 3x its
forward (forward + backward for activations and weights); recomputation by activation checkpointing is not
counted (model FLOPs, as MFU is defined). The image projector's backward has no input gradient, so it costs 2x.
"""

from __future__ import annotations

from dataclasses import dataclass

from internlm.config.schema import ModelConfig, SampleShapes

from .attention import MaskLayout, joint_layout, representation_layout
from .modeling_internlm import swiglu_hidden_size


def allowed_pairs(layout: MaskLayout) -> int:
    L = layout.seq_len
    if layout.kind == "full":
        return L * L
    pairs = L * (L + 1) // 2
    if layout.kind == "block_causal":
        for start, end in layout.image_blocks:
            n = end - start
            pairs += n * (n - 1) // 2  # the upper triangle of each image block
    return pairs


def backbone_forward_flops(d: int, num_layers: int, mlp_ratio: float, layout: MaskLayout,
                           dense_attention: bool = False) -> int:
    """One sequence through the blocks: the linear layers 2 L (4 d^2 + 3 d h) and attention 4 d per allowed pair
    (per pair of the full L x L square with ``dense_attention``, what a mask-unaware kernel computes)."""
    h = swiglu_hidden_size(d, mlp_ratio)
    L = layout.seq_len
    linear = 2 * L * (4 * d * d + 3 * d * h)
    attention = 4 * d * (L * L if dense_attention else allowed_pairs(layout))  # QK^T and PV
    return num_layers * (linear + attention)


def dino_head_flops(d: int, hidden: int, bottleneck: int, out_dim: int) -> int:
    return 2 * (d * hidden + hidden * hidden + hidden * bottleneck + bottleneck * out_dim)


@dataclass(frozen=True)
class SampleCost:
    train_flops: int  # student forward + backward and teacher forward, per sample
    student_tokens: int  # tokens through the student backbone per sample
    teacher_tokens: int


def view_layouts(m: ModelConfig, shapes: SampleShapes):
    p = m.patch_size
    n_global = (shapes.global_crop // p) ** 2
    n_local = (shapes.local_crop // p) ** 2
    n_pred = (shapes.frame // p) ** 2

    def rep(n):
        return representation_layout(n, m.causal, m.perframe_atten)

    joint = joint_layout(shapes.clip_steps, n_pred, m.perframe_atten)
    return rep(n_global), rep(n_local), rep(n_pred), joint, n_global, n_local, n_pred


def sample_cost(m: ModelConfig, shapes: SampleShapes, dense_attention: bool = False) -> SampleCost:
    """The FLOPs of one training sample of model ``m`` (the student's section; the teacher has the same sizes) with
    the run's ``shapes`` (TrainConfig.sample_shapes())."""
    d, nl, r = m.hidden_size, m.num_layers, m.mlp_ratio
    head = dino_head_flops(d, m.head_hidden_dim, m.head_bottleneck_dim, m.output_dim)
    g_layout, l_layout, p_layout, joint, n_g, n_l, n_p = view_layouts(m, shapes)
    conv = 2 * 3 * m.patch_size ** 2 * d  # per image token
    n_local_views = shapes.local_crops

    def view(layout, n_tokens):  # one view through projector, backbone and representation head
        return conv * n_tokens + backbone_forward_flops(d, nl, r, layout, dense_attention) + head

    student_fwd = 2 * view(g_layout, n_g) + n_local_views * view(l_layout, n_l)
    student_conv = conv * (2 * n_g + n_local_views * n_l)  # its backward has no input gradient: 2x, not 3x
    teacher_fwd = 2 * view(g_layout, n_g)
    student_tokens = 2 * g_layout.seq_len + n_local_views * l_layout.seq_len
    teacher_tokens = 2 * g_layout.seq_len
    if shapes.joint:
        T = shapes.clip_steps
        action = 2 * m.pose_channels * m.pose_frames * m.num_joints * d
        student_fwd += (T * (conv * n_p + action + head + action)  # projectors, prediction and action heads
                        + backbone_forward_flops(d, nl, r, joint, dense_attention))
        # the teacher's view of every frame; with model.prediction_reprojection also of every reprojected frame
        passes = 2 if m.prediction_reprojection else 1
        teacher_fwd += passes * T * view(p_layout, n_p)
        student_conv += T * conv * n_p
        student_tokens += joint.seq_len
        teacher_tokens += passes * T * p_layout.seq_len
    return SampleCost(3 * student_fwd - student_conv + teacher_fwd, student_tokens, teacher_tokens)
