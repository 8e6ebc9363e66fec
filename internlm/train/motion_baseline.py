"""Training of the pose-only siMLPe baseline (internlm/model/simlpe.py) and of its privileged oracles on the
training clips' poses.

Each training clip is one sample: its first F_in poses in, the rest predicted by siMLPe's passes (the rollout the
motion evaluation scores, trained through). Loss as siMLPe's: the mean joint position error (L2 distance, what
MPJPE measures) over the joints visible in each target frame, plus the same error on frame-to-frame velocities.
AdamW with a cosine learning rate.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from tqdm import tqdm

from internlm.model.simlpe import SiMLPe, SiMLPeConfig


def motion_loss(pred: torch.Tensor, xyz: torch.Tensor, visible: torch.Tensor, input_frames: int) -> torch.Tensor:
    """pred (N, F_out, J, 3) for frames F_in.., xyz (N, F, J, 3) and visible (N, F, J) the whole clip."""
    target, vis = xyz[:, input_frames:], visible[:, input_frames:].float()
    position = ((pred - target).norm(dim=-1) * vis).sum() / vis.sum().clamp_min(1)
    full = torch.cat([xyz[:, input_frames - 1:input_frames], pred], dim=1)  # the true last input starts it
    v_pred, v_true = full[:, 1:] - full[:, :-1], xyz[:, input_frames:] - xyz[:, input_frames - 1:-1]
    v_vis = vis * visible[:, input_frames - 1:-1].float()
    velocity = ((v_pred - v_true).norm(dim=-1) * v_vis).sum() / v_vis.sum().clamp_min(1)
    return position + velocity


def train_simlpe(xyz: torch.Tensor, visible: torch.Tensor, input_frames: int = 5, steps: int = 3000,
                 batch_size: int = 64, lr: float = 3e-3, weight_decay: float = 1e-4, seed: int = 0,
                 progress: bool = True, cfg: Optional[SiMLPeConfig] = None,
                 condition: Optional[torch.Tensor] = None) -> tuple[SiMLPe, list[float]]:
    """xyz (N, F, J, 3) clips, visible (N, F, J) bool, condition (N, passes, C) for an oracle -> (trained SiMLPe in
    eval mode, loss per step)."""
    N, F, J, _ = xyz.shape
    horizon = F - input_frames
    cfg = cfg or SiMLPeConfig(joints=J, frames=input_frames)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = SiMLPe(cfg)
    if cfg.condition_dim:
        model.set_condition_statistics(condition)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    losses = []
    for _ in tqdm(range(steps), desc="siMLPe" + (f" ({cfg.condition})" if cfg.condition else ""),
                  disable=not progress, mininterval=2.0):
        idx = torch.randint(0, N, (min(batch_size, N),), generator=g)
        pred = model(xyz[idx, :input_frames], visible[idx, :input_frames], horizon,
                     None if condition is None else condition[idx])
        loss = motion_loss(pred, xyz[idx], visible[idx], input_frames)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    return model.eval(), losses
