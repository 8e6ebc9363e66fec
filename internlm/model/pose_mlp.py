"""A pose-only motion predictor in the style of siMLPe (Guo et al., "Back to MLP", WACV 2023): the learned
baseline the action evaluation puts next to EgoAgent (the paper's Table 3 compares with such models).

Input: the observed poses (N, F_in, J, 3) with visibility; output: the next F_out poses. As in siMLPe, the
sequence is made relative to the last observed pose and padded to F_in + F_out frames by repeating it, taken
to the DCT domain over time, mixed by a linear layer across joints, by blocks of linear layers across the DCT
coefficients (each with a LayerNorm and a skip connection), by a last linear layer across joints (initialised
at 0, so an untrained model is the zero-velocity baseline), taken back by the inverse DCT, and added to the
last observed pose. It sees no image.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .pose_ops import last_observed_pose


def dct_matrix(n: int) -> torch.Tensor:
    """(n, n) orthonormal DCT-II: row k is the k-th cosine basis over n samples (inverse = transpose)."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    m = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    m[0] /= math.sqrt(2.0)
    return m.float()


@dataclass(frozen=True)
class PoseMLPConfig:
    joints: int = 17
    input_frames: int = 5
    output_frames: int = 15
    blocks: int = 8


class _TemporalBlock(nn.Module):
    """x + LayerNorm over the features of (Linear over the time axis of x): (N, T, C) -> (N, T, C)."""

    def __init__(self, frames: int, features: int):
        super().__init__()
        self.fc = nn.Linear(frames, frames)
        self.norm = nn.LayerNorm(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.norm(self.fc(x.transpose(1, 2)).transpose(1, 2))


class PoseMLP(nn.Module):
    def __init__(self, cfg: PoseMLPConfig = PoseMLPConfig()):
        super().__init__()
        self.cfg = cfg
        frames, features = cfg.input_frames + cfg.output_frames, 3 * cfg.joints
        self.register_buffer("dct", dct_matrix(frames), persistent=False)
        self.fc_in = nn.Linear(features, features)
        self.blocks = nn.Sequential(*[_TemporalBlock(frames, features) for _ in range(cfg.blocks)])
        self.fc_out = nn.Linear(features, features)
        nn.init.zeros_(self.fc_out.weight)
        nn.init.zeros_(self.fc_out.bias)

    def forward(self, xyz: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """xyz (N, F_in, J, 3) observed poses, visible (N, F_in, J) bool -> (N, F_out, J, 3) predicted poses."""
        N, F_in, J, _ = xyz.shape
        last = last_observed_pose(xyz, visible)  # (N, J, 3)
        # an unseen joint holds its last observation before (or, never seen, the body centre): no -1 placeholders
        held = torch.where(visible.unsqueeze(-1), xyz, last.unsqueeze(1))
        offsets = (held - last.unsqueeze(1)).flatten(2)  # (N, F_in, 3J)
        padded = torch.cat([offsets, offsets.new_zeros(N, self.cfg.output_frames, 3 * J)], dim=1)  # (N, T, 3J)
        x = torch.einsum("kt,ntc->nkc", self.dct, padded)  # DCT over time
        x = self.fc_out(self.blocks(self.fc_in(x)))
        x = torch.einsum("kt,nkc->ntc", self.dct, x)  # inverse DCT
        return last.unsqueeze(1) + x[:, F_in:].unflatten(2, (J, 3))

    def export(self) -> dict:
        return {"config": asdict(self.cfg), "state_dict": self.state_dict()}

    @classmethod
    def from_export(cls, payload: dict) -> "PoseMLP":
        model = cls(PoseMLPConfig(**payload["config"]))
        model.load_state_dict(payload["state_dict"])
        return model.eval()
