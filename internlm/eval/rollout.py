"""Autoregressive pose rollout of the joint model (the protocol: eval_3dposes.py --help).

Inputs: the T step frames of a clip and the true poses of step 0. The action query of step t predicts the poses
of step t from frames <= t and poses < t, so step t is predicted once steps < t are known: the prediction for
step t (x, y, z; visibility set to 1) becomes the action token of step t, and the rollout moves on to t + 1.
The pose slots of steps >= t are placeholders the action query of step t cannot see (the mask is causal).
"""

from __future__ import annotations

import torch

from .motion import block_from_poses


@torch.no_grad()
def autoregressive_rollout(model, frames: torch.Tensor, first_step: torch.Tensor) -> torch.Tensor:
    """frames (B, T, 3, P, P), first_step (B, 4, F, J) true poses of step 0 -> predicted xyz of steps 1..T-1,
    (B, (T - 1) * F, J, 3)."""
    B, T = frames.shape[:2]
    channels, F, J = first_step.shape[1:]
    action_tokens = torch.zeros(B, T, channels, F, J, dtype=first_step.dtype, device=first_step.device)
    action_tokens[:, 0] = first_step
    predicted = []
    for t in range(1, T):
        step = model.forward_joint(frames, action_tokens, with_logits=False).actions[:, t]  # (B, 4, F, J)
        xyz = step[:, :3].movedim(1, -1)  # (B, F, J, 3)
        predicted.append(xyz)
        action_tokens[:, t] = block_from_poses(xyz, torch.ones(B, F, J, dtype=torch.bool, device=xyz.device))
    return torch.cat(predicted, dim=1).float()
