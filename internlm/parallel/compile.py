"""torch.compile of the transformer blocks (model.compile), applied from outside the model like the parallel
wrappers: each InternLM block of the student and the teacher is compiled on its own (torchtitan's choice: one
small graph reused by every layer compiles fast). Inside a compiled block inductor fuses the fp32 RMSNorm and the
rotary embedding with their neighbours into a few kernels (eager runs each upcast, multiply and add as its own
kernel).

All blocks share one code object, so every (shape, layout, gradient mode) a run feeds them is one entry of dynamo's
cache, whose default limit (8) a stage-2 run with validation exceeds; past it, dynamo silently runs the block
eagerly. ``recompile_budget`` counts what a config will feed the blocks and the limit is raised to cover it."""

from __future__ import annotations

import logging

import torch
from torch import nn

from internlm.config import TrainConfig
from internlm.model.flops import view_layouts
from internlm.model.modeling_internlm import InternLMBlock

logger = logging.getLogger(__name__)


def compile_enabled(cfg: TrainConfig, device: torch.device) -> bool:
    """model.compile, or by default: on CUDA (fused norm and rotary), not on a CPU (measured: not worth its
    compilation time for the demo, benchmarks/RESULTS.md)."""
    return cfg.model.compile if cfg.model.compile is not None else device.type == "cuda"


def block_call_shapes(cfg: TrainConfig) -> set[tuple]:
    """Every (batch, tokens, attention layout, trains) a run of ``cfg`` feeds the transformer blocks: training
    chunks, validation and calibration batches, for the student and the teacher."""
    data, joint = cfg.data, cfg.loss.is_joint
    g_layout, l_layout, p_layout, joint_layout, *_ = view_layouts(cfg.model, cfg.sample_shapes())
    n_local = data.local_crops_number if data.use_local_crop else 0
    teacher_frame_groups = 2 if cfg.model.prediction_reprojection else 1
    shapes = set()

    def step(batch: int, trains: bool, with_teacher_frames: bool = True, views: bool = True):
        if views:
            shapes.add((2 * batch, g_layout.seq_len, g_layout.kind, trains))  # student global crops
            shapes.add((2 * batch, g_layout.seq_len, g_layout.kind, False))  # teacher global crops
            if n_local:
                shapes.add((n_local * batch, l_layout.seq_len, l_layout.kind, trains))
        if joint:
            shapes.add((batch, joint_layout.seq_len, joint_layout.kind, trains))
            if with_teacher_frames:
                # the teacher's frames (and reprojected frames) go through in one call per group
                for _ in range(teacher_frame_groups):
                    shapes.add((batch * data.clip_steps, p_layout.seq_len, p_layout.kind, False))

    step(data.micro_num // data.gradient_accumulation, True)
    if data.valid_every:
        step(data.valid_micro_num, False)
    if joint and data.calibration_takes:
        step(data.valid_micro_num, False, views=False)
    return shapes


def recompile_budget(cfg: TrainConfig) -> int:
    """Dynamo cache entries the blocks need: each shape, with a margin for the guards a mode change adds (eval vs
    train, activation checkpointing, the last partial batch of an epoch)."""
    return 2 * len(block_call_shapes(cfg)) + 8


def set_recompile_limit(limit: int) -> int:
    """Raise dynamo's per-code cache limit to ``limit`` (never lower it); returns the limit in force."""
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), limit))
    return getattr(config, name)


def compile_blocks(model: nn.Module, cfg: TrainConfig | None = None, backend: str = "inductor") -> int:
    """Compile every InternLM block of ``model`` in place; returns how many. State-dict keys and parameters are
    unchanged, so checkpoints, the EMA update and the exports do not see it. With ``cfg``, dynamo's cache limit is
    raised to the config's recompile_budget."""
    if cfg is not None:
        limit = set_recompile_limit(recompile_budget(cfg))
        logger.info("torch.compile: %d block shapes in this run, dynamo cache limit %d", len(block_call_shapes(cfg)),
                    limit)
    blocks = [m for m in model.modules() if isinstance(m, InternLMBlock)]
    for block in blocks:
        block.compile(backend=backend, dynamic=False)
    return len(blocks)


def check_compile_available(device: torch.device) -> None:
    """Fail at start-up, with the reason, when inductor cannot compile here (it needs a C++ compiler on CPU and
    Triton on GPU)."""
    try:
        probe = torch.compile(lambda x: torch.nn.functional.silu(x) * 2, backend="inductor")
        probe(torch.ones(4, device=device))
    except Exception as exc:  # noqa: BLE001 - any failure means the same thing to the user
        raise RuntimeError(f"model.compile=True, but torch.compile (inductor) cannot run on {device}: "
                           f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}; set "
                           "model.compile=False") from exc
