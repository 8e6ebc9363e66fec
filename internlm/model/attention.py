"""Multi-head self-attention with explicit, checked kernel backends and the EgoAgent mask layouts.

Backends (chosen by name, never silently swapped):
- "sdpa":  torch.nn.functional.scaled_dot_product_attention; always available. A block-causal layout is passed
           as a dense boolean mask.
- "flex":  torch FlexAttention with a block mask built from the layout (compiled on CUDA; the unfused
           reference implementation on CPU).
- "flash": the flash-attn package; CUDA, fp16/bf16, and only the "full" and "causal" layouts.
A backend that cannot run raises AttentionBackendError saying why and what to choose instead.

Self-contained (torch only) for the Hugging Face export.
"""

from __future__ import annotations

import importlib
import warnings
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .rotary import RotaryEmbedding

# config/schema.py ATTENTION_BACKENDS validates model.attn_backend against the same names (this file travels with the
# Hugging Face export, which imports nothing of this repository; tests/test_model.py holds the two lists equal)
BACKENDS = ("sdpa", "flex", "flash")


class AttentionBackendError(RuntimeError):
    """The chosen attention backend cannot run here; the message says why."""


@dataclass(frozen=True)
class MaskLayout:
    """Which key each query may attend to.

    kind "full": everything; "causal": keys at or before the query; "block_causal": causal, and in addition the
    tokens of each image block (one frame's image tokens, ``image_blocks`` = ((start, end), ...)) see each other.
    """

    kind: str
    seq_len: int
    image_blocks: tuple[tuple[int, int], ...] = ()

    def block_ids(self, device) -> torch.Tensor:
        """(L,) int: tokens of one image block share an id; every other token has its own id."""
        ids = torch.arange(self.seq_len, device=device)
        for start, end in self.image_blocks:
            ids[start:end] = start
        return ids

    def dense(self, device) -> Optional[torch.Tensor]:
        """(L, L) bool, True = may attend; None for "full"."""
        if self.kind == "full":
            return None
        pos = torch.arange(self.seq_len, device=device)
        allowed = pos[None, :] <= pos[:, None]
        if self.kind == "block_causal":
            ids = self.block_ids(device)
            allowed = allowed | (ids[None, :] == ids[:, None])
        return allowed


# The joint branch's tokens per step besides the image tokens: action query, action token, future-state query.
TOKENS_PER_STEP_EXTRA = 3


def representation_layout(num_image_tokens: int, causal: bool, perframe_atten: bool) -> MaskLayout:
    """[image tokens of one view (N), state query]. Block-causal over one frame and a trailing query lets every
    token see every token ("full"); plain causal attention (perframe_atten=False) stays causal."""
    L = num_image_tokens + 1
    return MaskLayout("causal" if causal and not perframe_atten else "full", L)


def joint_layout(num_steps: int, num_image_tokens: int, perframe_atten: bool) -> MaskLayout:
    """Per step t: [image tokens of frame t (N), action query, action token, future-state query], T steps."""
    per_step = num_image_tokens + TOKENS_PER_STEP_EXTRA
    L = num_steps * per_step
    if not perframe_atten:
        return MaskLayout("causal", L)
    blocks = tuple((t * per_step, t * per_step + num_image_tokens) for t in range(num_steps))
    return MaskLayout("block_causal", L, blocks)


def _flash_attn_module():
    # imported by name: transformers scans the files of a Hub export for import statements and would demand
    # flash-attn from everyone who loads it, though it is optional
    return importlib.import_module("flash_attn")


def flash_attn_available() -> tuple[bool, str]:
    try:
        _flash_attn_module()
    except ImportError as exc:
        return False, f"the flash-attn package is not installed ({exc}); pip install -r requirements/gpu.txt"
    return True, ""


def check_backend(name: str, layout_kind: str, device: torch.device, dtype: torch.dtype,
                  needs_grad: bool = False) -> None:
    """Raise AttentionBackendError if backend ``name`` cannot run this layout on this device/dtype."""
    if name not in BACKENDS:
        raise AttentionBackendError(f"unknown attention backend {name!r}; expected one of {', '.join(BACKENDS)}")
    if name == "flex":
        try:
            from torch.nn.attention import flex_attention  # noqa: F401
        except ImportError as exc:
            raise AttentionBackendError(f"FlexAttention needs torch >= 2.5 ({exc}); use attn_backend='sdpa'") from exc
        if device.type == "cpu" and needs_grad:
            raise AttentionBackendError("attn_backend='flex' has no backward pass on the CPU in PyTorch; train on the"
                                        " CPU with attn_backend='sdpa' (flex runs CPU inference only)")
    if name == "flash":
        # the mask first: no installation or device can make flash-attn run it
        if layout_kind == "block_causal":
            raise AttentionBackendError(
                "attn_backend='flash' cannot express the block-causal mask of the joint branch (perframe_atten=True);"
                " use attn_backend='flex' (or 'sdpa')"
            )
        ok, why = flash_attn_available()
        if not ok:
            raise AttentionBackendError(f"attn_backend='flash': {why}; or use attn_backend='sdpa'")
        if device.type != "cuda":
            raise AttentionBackendError(f"attn_backend='flash' needs a CUDA device, got {device}; use 'sdpa'")
        if dtype not in (torch.float16, torch.bfloat16):
            raise AttentionBackendError(f"attn_backend='flash' needs fp16 or bf16 activations, got {dtype}; use 'sdpa'")


class AttentionKernel:
    """One backend for the whole model. ``prepare`` turns a layout into what the backend needs, once per forward
    (a dense mask for sdpa, a cached BlockMask for flex), so the blocks do not rebuild it layer by layer."""

    def __init__(self, backend: str = "sdpa"):
        if backend not in BACKENDS:
            raise AttentionBackendError(f"unknown attention backend {backend!r}; expected one of {', '.join(BACKENDS)}")
        self.backend = backend
        self._block_masks: dict = {}
        self._compiled_flex = None
        self._checked: set = set()

    def prepare(self, layout: MaskLayout, device: torch.device, dtype: torch.dtype) -> "PreparedMask":
        key = (layout.kind, device.type, dtype)
        if key not in self._checked:
            check_backend(self.backend, layout.kind, device, dtype)
            self._checked.add(key)
        if self.backend == "sdpa":
            dense = layout.dense(device) if layout.kind == "block_causal" else None
            return PreparedMask(layout, dense)
        if self.backend == "flex":
            return PreparedMask(layout, self._flex_block_mask(layout, device))
        return PreparedMask(layout, None)

    def _flex_block_mask(self, layout: MaskLayout, device: torch.device):
        if layout.kind == "full":
            return None
        key = (layout, str(device))
        if key not in self._block_masks:
            from torch.nn.attention.flex_attention import create_block_mask

            ids = layout.block_ids(device)
            causal_only = layout.kind == "causal"

            def mask_mod(b, h, q_idx, kv_idx):
                allowed = kv_idx <= q_idx
                if causal_only:
                    return allowed
                return allowed | (ids[q_idx] == ids[kv_idx])

            self._block_masks[key] = create_block_mask(mask_mod, None, None, layout.seq_len, layout.seq_len,
                                                       device=device)
        return self._block_masks[key]

    def __call__(self, q, k, v, mask: "PreparedMask", scale: float) -> torch.Tensor:
        """q, k, v (B, H, L, D) -> (B, H, L, D)."""
        kind = mask.layout.kind
        if self.backend == "sdpa":
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask.data, is_causal=kind == "causal",
                                                  scale=scale)
        if self.backend == "flex":
            from torch.nn.attention.flex_attention import flex_attention

            if q.requires_grad:
                check_backend("flex", kind, q.device, q.dtype, needs_grad=True)
            if q.device.type == "cuda":
                if self._compiled_flex is None:
                    self._compiled_flex = torch.compile(flex_attention, dynamic=False)
                return self._compiled_flex(q, k, v, block_mask=mask.data, scale=scale)
            with warnings.catch_warnings():
                # On CPU the unfused reference implementation is intended (tests, laptops): no warning per call.
                warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
                return flex_attention(q, k, v, block_mask=mask.data, scale=scale)
        out = _flash_attn_module().flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                   softmax_scale=scale, causal=kind == "causal")  # (B, L, H, D)
        return out.transpose(1, 2)


@dataclass
class PreparedMask:
    layout: MaskLayout
    data: Optional[object]  # dense (L, L) bool for sdpa block-causal, a BlockMask for flex, else None


class MultiHeadAttention(nn.Module):
    """Fused qkv projection with bias, rotary embedding, attention, output projection with bias (InternLM)."""

    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.scale = self.head_dim ** -0.5
        self.Wqkv = nn.Linear(hidden_size, 3 * hidden_size, bias=True)
        self.out_proj = nn.Linear(hidden_size, hidden_size, bias=True)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], mask: PreparedMask,
                kernel: AttentionKernel) -> torch.Tensor:  # (B, L, d) -> (B, L, d)
        B, L, _ = x.shape
        qkv = self.Wqkv(x).view(B, L, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, L, D)
        cos, sin = rope
        q, k = RotaryEmbedding.rotate(q, cos, sin), RotaryEmbedding.rotate(k, cos, sin)
        out = kernel(q, k, v, mask, self.scale)  # (B, H, L, D)
        return self.out_proj(out.transpose(1, 2).reshape(B, L, -1))
