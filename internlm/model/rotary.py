"""1D rotary position embedding over the whole head dim, half-split ("NeoX") rotation, as InternLM.

Positions are 0..L-1 over the whole token sequence. Self-contained (torch only) for the Hugging Face export.
"""

import torch
from torch import nn


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        self.head_dim = head_dim
        self.base = base
        self._cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def cos_sin(self, seq_len: int, device: torch.device, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of shape (L, head_dim) in fp32 for positions offset..offset+L-1."""
        key = (seq_len, offset, str(device))
        if key not in self._cache:
            inv_freq = 1.0 / (self.base ** (torch.arange(0, self.head_dim, 2, device=device, dtype=torch.float64)
                                            / self.head_dim))  # (D/2,)
            pos = torch.arange(offset, offset + seq_len, device=device, dtype=torch.float64)
            angles = torch.outer(pos, inv_freq)  # (L, D/2)
            angles = torch.cat([angles, angles], dim=-1)  # (L, D): half-split layout
            self._cache[key] = (angles.cos().float(), angles.sin().float())
        return self._cache[key]

    @staticmethod
    def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x (B, H, L, D) rotated by position; computed in fp32, returned in x's dtype."""
        half = x.shape[-1] // 2
        xf = x.float()
        rotated = torch.cat([-xf[..., half:], xf[..., :half]], dim=-1)
        return (xf * cos + rotated * sin).to(x.dtype)
