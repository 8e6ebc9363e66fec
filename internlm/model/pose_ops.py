"""Small operations on pose sequences shared by the action head (residual base) and the motion baselines.

Poses are xyz (..., F, J, 3) with a visibility mask (..., F, J): a joint no view saw has no position.
"""

from __future__ import annotations

import torch


def block_from_poses(xyz: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """xyz (..., F, J, 3), visible (..., F, J) -> one step block (..., 4, F, J)."""
    return torch.cat([xyz.movedim(-1, -3), visible.to(xyz.dtype).unsqueeze(-3)], dim=-3)


def last_two_visible(visible: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """visible (N, F, J) -> frame index of the last and the second-to-last visible observation (N, J), -1 if none."""
    F = visible.shape[1]
    frame_idx = torch.arange(F, device=visible.device).view(1, F, 1).expand_as(visible)
    marked = torch.where(visible, frame_idx, torch.full_like(frame_idx, -1))  # (N, F, J)
    last = marked.max(dim=1).values  # (N, J)
    before_last = torch.where(frame_idx < last[:, None], marked, torch.full_like(frame_idx, -1)).max(dim=1).values
    return last, before_last


def fill_unseen(pose: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
    """A joint never visible gets the mean of the visible ones (the body centre), 0 if none is.
    pose (N, J, 3), seen (N, J) -> (N, J, 3)."""
    w = seen.unsqueeze(-1).to(pose.dtype)
    centre = (pose * w).sum(dim=1, keepdim=True) / w.sum(dim=1, keepdim=True).clamp_min(1)  # (N, 1, 3)
    return torch.where(seen.unsqueeze(-1), pose, centre.expand_as(pose))


def pose_at(xyz: torch.Tensor, frame: torch.Tensor) -> torch.Tensor:
    """xyz (N, F, J, 3), frame (N, J) per-joint frame index (-1 -> 0) -> (N, J, 3)."""
    return xyz.gather(1, frame.clamp_min(0)[:, None, :, None].expand(-1, 1, -1, 3)).squeeze(1)


def last_observed_pose(xyz: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """Per joint, its last visible position among the F frames; a joint never seen takes the mean of the seen
    ones. xyz (N, F, J, 3), visible (N, F, J) bool -> (N, J, 3)."""
    last, _ = last_two_visible(visible)
    return fill_unseen(pose_at(xyz, last), last >= 0)


def block_xyz(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., 4, F, J) step blocks (x, y, z, visibility) -> xyz (..., F, J, 3), visible (..., F, J) bool."""
    return blocks[..., :3, :, :].movedim(-3, -1), blocks[..., 3, :, :] > 0.5
