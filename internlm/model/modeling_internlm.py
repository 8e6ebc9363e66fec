"""The InternLM decoder backbone used unchanged by EgoAgent (paper section 11.1).

Pre-norm blocks: x = x + Attn(RMSNorm(x)); x = x + SwiGLU(RMSNorm(x)); a final RMSNorm. Parameter names follow
InternLM (blocks.{i}.mixer.Wqkv / out_proj, norm1, norm2, mlp.w1 / w2 / w3, norm).

Self-contained (imports torch and its sibling files only): the Hugging Face export copies it as is.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.utils.checkpoint import checkpoint

from .attention import AttentionKernel, MaskLayout, MultiHeadAttention, PreparedMask
from .norm import RMSNorm
from .rotary import RotaryEmbedding


def swiglu_hidden_size(hidden_size: int, mlp_ratio: float) -> int:
    """InternLM rounds int(d * mlp_ratio) up to a multiple of 256: 1024 -> 2816, 2048 -> 5632."""
    return 256 * math.ceil(int(hidden_size * mlp_ratio) / 256)


class SwiGLU(nn.Module):
    """out = w3(silu(w1 x) * w2 x), no biases (w1 gate, w2 up, w3 down)."""

    def __init__(self, hidden_size: int, ffn_size: int):
        super().__init__()
        self.w1 = nn.Linear(hidden_size, ffn_size, bias=False)
        self.w2 = nn.Linear(hidden_size, ffn_size, bias=False)
        self.w3 = nn.Linear(ffn_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., d) -> (..., d)
        return self.w3(F.silu(self.w1(x)) * self.w2(x))


class InternLMBlock(nn.Module):
    def __init__(self, layer_idx: int, hidden_size: int, num_heads: int, ffn_size: int, eps: float):
        super().__init__()
        self.layer_idx = layer_idx
        self.norm1 = RMSNorm(hidden_size, eps)
        self.mixer = MultiHeadAttention(hidden_size, num_heads)
        self.norm2 = RMSNorm(hidden_size, eps)
        self.mlp = SwiGLU(hidden_size, ffn_size)

    def forward(self, x, rope, mask: PreparedMask, kernel: AttentionKernel):  # (B, L, d) -> (B, L, d)
        x = x + self.mixer(self.norm1(x), rope, mask, kernel)
        return x + self.mlp(self.norm2(x))


class InternLMBackbone(nn.Module):
    """The transformer over a sequence of continuous tokens (no token embedding, no output head)."""

    def __init__(self, hidden_size: int, num_layers: int, num_heads: int, mlp_ratio: float, eps: float = 1e-6,
                 rope_base: float = 10000.0, attn_backend: str = "sdpa", checkpoint_fraction: float = 0.0):
        super().__init__()
        ffn_size = swiglu_hidden_size(hidden_size, mlp_ratio)
        self.blocks = nn.ModuleList(
            InternLMBlock(i, hidden_size, num_heads, ffn_size, eps) for i in range(num_layers)
        )
        self.norm = RMSNorm(hidden_size, eps)
        self.rotary = RotaryEmbedding(hidden_size // num_heads, rope_base)
        self.kernel = AttentionKernel(attn_backend)
        # InternLM recomputes the first round(fraction * num_layers) blocks in the backward pass.
        self.num_checkpointed = int(round(checkpoint_fraction * num_layers))
        # weights_cast_once: off where a wrapper already gathers the weights in the compute dtype (FSDP2)
        self.cast_weights_once = True
        self._cast: Optional[dict[int, dict[str, torch.Tensor]]] = None
        self._cast_dtype = torch.float32
        self._kept_casts: dict[int, tuple] = {}
        # set from outside (internlm/parallel/grad_accumulation.py): called before block i runs with gradients, it
        # returns tensors the block's modules read for that call (the fp32 buffers its linear layers add their weight
        # gradients into), or None; with them the block's weights are cast detached, once per optimizer step
        self.block_call_tensors: Optional[Callable[[int, torch.Tensor], Optional[dict[str, torch.Tensor]]]] = None

    @contextlib.contextmanager
    def weights_cast_once(self, dtype: torch.dtype):
        """Within: every block call uses its linear layers' weights and biases cast to ``dtype`` here, once, for all
        the calls (the passes of one forward), as eager autocast's cast cache does for trainable weights. A
        torch.compile'd block would otherwise cast them inside its graph at every call and keep a copy per call for
        its backward; the teacher's weights (no gradient) are not cached by autocast at all. Gradients flow through
        the cast to the fp32 weights."""
        if not self.cast_weights_once:
            yield
            return
        self._cast, self._cast_dtype = {}, dtype
        try:
            yield
        finally:
            self._cast = None

    def forget_weight_casts(self) -> None:
        """Drop the casts kept across forwards: the weights changed in a way their version counters do not show
        (a fused AdamW updates them in place without bumping the counters)."""
        self._kept_casts.clear()

    def _cast_weights(self, i: int, detached: bool) -> dict[str, torch.Tensor]:
        # made at the block's first call: the casts' backward then runs (and the gradient is ready) as soon as the
        # block's last backward pass is through, not after the whole backward
        if i not in self._cast:
            block = self.blocks[i]
            params = [(name, p) for name, p in block.named_parameters()
                      if isinstance(block.get_submodule(name.rpartition(".")[0]), nn.Linear)]
            # weights without gradient (the EMA teacher), or whose gradients do not come through the cast, keep
            # their casts across forwards until they change (an in-place update bumps a tensor's version): one cast
            # per optimizer step instead of one per forward
            frozen = detached or not any(p.requires_grad for _, p in params)
            key = (self._cast_dtype, tuple((p._version, p.untyped_storage()._cdata) for _, p in params))
            kept = self._kept_casts.get(i)
            if frozen and kept is not None and kept[0] == key:
                self._cast[i] = kept[1]
            else:
                self._cast[i] = {name: (p.detach() if frozen else p).to(self._cast_dtype) for name, p in params}
                if frozen:
                    self._kept_casts[i] = (key, self._cast[i])
        return self._cast[i]

    def forward(self, x: torch.Tensor, layout: MaskLayout) -> torch.Tensor:  # (B, L, d) -> (B, L, d), final-normed
        assert x.shape[1] == layout.seq_len, (x.shape, layout.seq_len)
        compute_dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) \
            else x.dtype
        mask = self.kernel.prepare(layout, x.device, compute_dtype)
        rope = self.rotary.cos_sin(layout.seq_len, x.device)
        for i, block in enumerate(self.blocks):
            extra = self.block_call_tensors(i, x) if self.block_call_tensors is not None and \
                torch.is_grad_enabled() else None
            tensors = dict(self._cast_weights(i, detached=extra is not None)) if self._cast is not None else {}
            tensors.update(extra or {})
            call = _with_parameters(block, tensors) if tensors else block
            if self.training and i < self.num_checkpointed and torch.is_grad_enabled():
                x = checkpoint(call, x, rope, mask, self.kernel, use_reentrant=False)
            else:
                x = call(x, rope, mask, self.kernel)
        return self.norm(x)


def _with_parameters(module: nn.Module, parameters: dict[str, torch.Tensor]):
    return lambda *args: functional_call(module, parameters, args)


@torch.no_grad()
def init_internlm_weights(backbone: InternLMBackbone, std: float = 0.006, w3_std: float = 0.0015) -> None:
    """InternLM's normal init: qkv and w1 std 0.006; out_proj and w2 0.006 / sqrt(2 (layer + 1)); w3 0.0015;
    biases 0; norms 1."""
    for block in backbone.blocks:
        depth_std = std / math.sqrt(2.0 * (block.layer_idx + 1))
        nn.init.normal_(block.mixer.Wqkv.weight, std=std)
        nn.init.zeros_(block.mixer.Wqkv.bias)
        nn.init.normal_(block.mixer.out_proj.weight, std=depth_std)
        nn.init.zeros_(block.mixer.out_proj.bias)
        nn.init.normal_(block.mlp.w1.weight, std=std)
        nn.init.normal_(block.mlp.w2.weight, std=depth_std)
        nn.init.normal_(block.mlp.w3.weight, std=w3_std)
        block.norm1.weight.fill_(1.0)
        block.norm2.weight.fill_(1.0)
    backbone.norm.weight.fill_(1.0)


def backbone_param_count(hidden_size: int, num_layers: int, mlp_ratio: float) -> int:
    """Closed form: per block 4 d^2 + 3 d h + 6 d (qkv + out with biases, SwiGLU, two norms), plus the final norm."""
    h = swiglu_hidden_size(hidden_size, mlp_ratio)
    d = hidden_size
    return num_layers * (4 * d * d + 3 * d * h + 6 * d) + d
