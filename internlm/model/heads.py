"""Output heads of EgoAgent (paper Table 8)."""

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm


class DINOHead(nn.Module):
    """Linear(d, 2048) GELU Linear(2048, 2048) GELU Linear(2048, 256), L2-normalise, weight-normalised
    Linear(256, K, no bias). With norm_last_layer the weight norm g is fixed to 1 (DINO), so the logits are
    cosine similarities to K prototypes. ``zero_gain``: every prototype's g starts at 0 and is learned (the head
    outputs 0 at first: a change added to a base, the residual state-prediction option)."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 norm_last_layer: bool = True, zero_gain: bool = False):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim), nn.GELU(),
            nn.Linear(hidden_dim, bottleneck_dim),
        )
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        with torch.no_grad():
            self.last_layer.parametrizations.weight.original0.fill_(0.0 if zero_gain else 1.0)  # g
        if norm_last_layer and not zero_gain:
            self.last_layer.parametrizations.weight.original0.requires_grad = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., d) -> (..., K)
        h = self.mlp(x)
        # fp32: the gradient of the normalisation grows like 1/|h|, which overflows fp16 early in training
        h = F.normalize(h.float(), dim=-1, p=2, eps=1e-6).to(h.dtype)
        return self.last_layer(h)


class ActionHead(nn.Module):
    """Linear(d, 4 * 5 * 17) -> the next pose block (x, y, z, visibility) x 5 frames x 17 joints.

    ``zero_init``: all outputs start at 0, for a head that predicts offsets from a base pose (the residual option
    of EgoAgent): training then starts from "the body stays where it was last seen"."""

    def __init__(self, hidden_size: int, channels: int = 4, frames: int = 5, joints: int = 17,
                 zero_init: bool = False):
        super().__init__()
        self.shape = (channels, frames, joints)
        self.proj = nn.Linear(hidden_size, channels * frames * joints)
        if zero_init:
            nn.init.zeros_(self.proj.weight)
        else:
            nn.init.trunc_normal_(self.proj.weight, std=0.02)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., d) -> (..., 4, 5, 17)
        return self.proj(x).unflatten(-1, self.shape)
