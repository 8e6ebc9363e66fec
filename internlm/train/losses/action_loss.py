"""L_act: L1 between predicted and true x, y, z of every step's poses, over visible joints only (paper eq. 1)."""

from __future__ import annotations

from typing import Optional

import torch

XYZ = slice(0, 3)
VISIBILITY = 3


def visible_elements(poses: torch.Tensor) -> torch.Tensor:
    """poses (..., 4, 5, 17) -> number of visible x/y/z elements (a 0-dim tensor)."""
    return poses[..., VISIBILITY, :, :].sum() * 3


def action_l1_sum(pred: torch.Tensor, poses: torch.Tensor) -> torch.Tensor:
    """pred, poses (B, T, 4, 5, 17) -> sum of |pred - true| over the x, y, z of visible joints (fp32)."""
    visible = poses[:, :, VISIBILITY:VISIBILITY + 1].float()  # (B, T, 1, 5, 17)
    err = (pred[:, :, XYZ].float() - poses[:, :, XYZ].float()).abs() * visible
    return err.sum()


def action_loss(pred: torch.Tensor, poses: torch.Tensor, normalizer: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean L1 over visible elements. ``normalizer`` (the number of visible elements of the whole optimizer step
    over all ranks, times the world size to undo the gradient averaging) makes chunks and ranks add up to the
    mean over the global batch; by default this batch's own count."""
    if normalizer is None:
        normalizer = visible_elements(poses)
    return action_l1_sum(pred, poses) / normalizer.clamp_min(1)
