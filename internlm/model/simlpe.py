"""siMLPe (Guo et al., "Back to MLP: A Simple Baseline for Human Motion Prediction", WACV 2023): the pose-only
motion predictor of the paper's Table 3, beside EgoAgent in the action evaluation.

One pass maps the last F observed poses to the next F (siMLPe predicts as many frames as it reads, here F = 5):
  poses (N, F, J, 3) -> (N, F, 3J) -> DCT over time (F coefficients) -> Linear over the 3J channels (spatial)
  -> B mixing blocks, each x + LayerNorm_channels(Linear_time(x)) (siMLPe's blocks mix the DCT coefficients;
     ``mixing="alternating"``: every second block mixes the channels instead, siMLPe's spatial+temporal variant)
  -> + the blocks' input (siMLPe's outer skip) -> Linear over the channels (initialised at ~0, so an untrained
     model is the zero-velocity baseline) -> inverse DCT -> + the last observed pose (siMLPe's residual output).
Longer horizons are predicted by passes fed with their own output (siMLPe's test protocol).

``condition_dim`` C > 0 turns it into a privileged oracle (the motion evaluation's ceilings, never a baseline): each
pass also reads C numbers (N, C), standardised with the training set's statistics (buffers, set_condition_statistics),
through an MLP (C -> 128 -> 3J, GELU; its last layer initialised at 0, so an untrained oracle is siMLPe) added to
every DCT coefficient after the spatial input layer.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional

import torch
from torch import nn

from .pose_ops import last_observed_pose

MIXING = ("temporal", "alternating")


def dct_matrix(n: int) -> torch.Tensor:
    """(n, n) orthonormal DCT-II: row k is the k-th cosine basis over n samples (inverse = transpose)."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    m = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    m[0] /= math.sqrt(2.0)
    return m.float()


@dataclass(frozen=True)
class SiMLPeConfig:
    joints: int = 17
    frames: int = 5  # read and predicted per pass
    blocks: int = 48  # siMLPe's Human3.6M setting
    mixing: str = "temporal"  # "temporal" (siMLPe's) | "alternating" (temporal and spatial blocks in turn)
    condition_dim: int = 0  # > 0: a privileged oracle's extra input per pass
    condition: str = ""  # what the condition is (the oracle's name; recorded with the weights)

    def __post_init__(self):
        if self.mixing not in MIXING:
            raise ValueError(f"siMLPe mixing={self.mixing!r}: expected one of {', '.join(MIXING)}")


class MixingBlock(nn.Module):
    """x + LayerNorm over the channels of (Linear over one axis of x): (N, F, D) -> (N, F, D). The Linear starts at
    ~0 (siMLPe: Xavier with gain 1e-8), so every block starts as the identity."""

    def __init__(self, frames: int, channels: int, over_time: bool):
        super().__init__()
        self.over_time = over_time
        self.fc = nn.Linear(frames if over_time else channels, frames if over_time else channels)
        self.norm = nn.LayerNorm(channels)
        nn.init.xavier_uniform_(self.fc.weight, gain=1e-8)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x.transpose(1, 2)).transpose(1, 2) if self.over_time else self.fc(x)
        return x + self.norm(y)


class SiMLPe(nn.Module):
    def __init__(self, cfg: SiMLPeConfig = SiMLPeConfig()):
        super().__init__()
        self.cfg = cfg
        F, pose_channels = cfg.frames, 3 * cfg.joints
        self.register_buffer("dct", dct_matrix(F), persistent=False)
        self.fc_in = nn.Linear(pose_channels, pose_channels)
        self.blocks = nn.Sequential(*[MixingBlock(F, pose_channels, over_time=cfg.mixing == "temporal" or b % 2 == 0)
                                      for b in range(cfg.blocks)])
        self.fc_out = nn.Linear(pose_channels, pose_channels)
        nn.init.xavier_uniform_(self.fc_out.weight, gain=1e-8)
        nn.init.zeros_(self.fc_out.bias)
        if cfg.condition_dim:
            self.condition_in = nn.Sequential(nn.Linear(cfg.condition_dim, 128), nn.GELU(),
                                              nn.Linear(128, pose_channels))
            nn.init.zeros_(self.condition_in[-1].weight)
            nn.init.zeros_(self.condition_in[-1].bias)
            self.register_buffer("condition_mean", torch.zeros(cfg.condition_dim))
            self.register_buffer("condition_std", torch.ones(cfg.condition_dim))

    @torch.no_grad()
    def set_condition_statistics(self, condition: torch.Tensor) -> None:
        """condition (..., C): the oracle's inputs over the training set -> the mean and std it standardises with."""
        flat = condition.reshape(-1, condition.shape[-1]).float()
        self.condition_mean.copy_(flat.mean(0))
        self.condition_std.copy_(flat.std(0).clamp_min(0.1))  # a feature constant in training stays near 0

    def one_pass(self, poses: torch.Tensor, condition: Optional[torch.Tensor] = None) -> torch.Tensor:
        """poses (N, F, J, 3) with no gaps, condition (N, C) -> the next F poses (N, F, J, 3)."""
        N, F, J, _ = poses.shape
        x = torch.einsum("kt,ntc->nkc", self.dct, poses.flatten(2))  # (N, F, 3J), DCT over time
        x = self.fc_in(x)
        if self.cfg.condition_dim:
            z = (condition.to(x.dtype) - self.condition_mean) / self.condition_std  # (N, C)
            x = x + self.condition_in(z)[:, None, :]
        x = x + self.blocks(x)
        x = torch.einsum("kt,nkc->ntc", self.dct, self.fc_out(x))  # (N, F, 3J), inverse DCT
        return poses[:, -1:] + x.unflatten(2, (J, 3))

    def forward(self, xyz: torch.Tensor, visible: torch.Tensor, horizon: int,
                condition: Optional[torch.Tensor] = None) -> torch.Tensor:
        """xyz (N, F_in >= F, J, 3) observed poses, visible (N, F_in, J) bool, condition (N, passes, C) (one row per
        pass of F frames; oracles only) -> (N, horizon, J, 3) predicted poses."""
        F = self.cfg.frames
        if xyz.shape[1] < F:
            raise ValueError(f"siMLPe reads {F} poses per pass, got {xyz.shape[1]}")
        passes = math.ceil(horizon / F)
        if self.cfg.condition_dim and (condition is None or condition.shape[1:] != (passes, self.cfg.condition_dim)):
            raise ValueError(f"this siMLPe is an oracle ({self.cfg.condition!r}): it needs its condition (N, {passes}, "
                             f"{self.cfg.condition_dim}), got {None if condition is None else tuple(condition.shape)}")
        last = last_observed_pose(xyz, visible)  # (N, J, 3)
        # an unseen joint holds its last observation before (or, never seen, the body centre): no -1 placeholders
        window = torch.where(visible.unsqueeze(-1), xyz, last.unsqueeze(1))[:, -F:]  # its last frame = last
        out = []
        for p in range(passes):
            window = self.one_pass(window, condition[:, p] if self.cfg.condition_dim else None)
            out.append(window)
        return torch.cat(out, dim=1)[:, :horizon]

    def export(self) -> dict:
        return {"config": asdict(self.cfg), "state_dict": self.state_dict()}

    @classmethod
    def from_export(cls, payload: dict) -> "SiMLPe":
        model = cls(SiMLPeConfig(**payload["config"]))
        model.load_state_dict(payload["state_dict"])
        return model.eval()
