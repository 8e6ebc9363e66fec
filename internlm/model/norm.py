"""RMSNorm computed in fp32 (InternLM), whatever the activation dtype.

Self-contained (imports torch only): the Hugging Face export copies this file next to the model code.
"""

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., dim) -> (..., dim), same dtype
        # fp16 activations lose the small mean-square of early layers; normalise in fp32 and cast back.
        out = F.rms_norm(x.float(), (x.shape[-1],), self.weight.float(), self.eps)
        return out.to(x.dtype)
