"""Autoregressive pose rollout of the joint model (the protocol: eval_3dposes.py --help).

Inputs: the T step frames of a clip and the true poses of step 0. The action query of step t predicts the poses
of step t from frames <= t and poses < t, so step t is predicted once steps < t are known: the prediction for
step t (x, y, z; visibility set to 1) becomes the action token of step t, and the rollout moves on to t + 1.
The pose slots of steps >= t are placeholders the action query of step t cannot see (the mask is causal).
"""

from __future__ import annotations

import torch


@torch.no_grad()
def autoregressive_rollout(model, frames: torch.Tensor, first_step: torch.Tensor) -> torch.Tensor:
    """frames (B, T, 3, P, P), first_step (B, 4, F, J) true poses of step 0 -> predicted xyz of steps 1..T-1,
    (B, (T - 1) * F, J, 3). T - 1 passes: the first from placeholder tokens (exact for step 1), then
    EgoAgent.rollout_pass (each exact for one more step), the same function that training's loss.act_rollout_passes
    runs."""
    B, T = frames.shape[:2]
    tokens = torch.zeros(B, T, *first_step.shape[1:], dtype=first_step.dtype, device=first_step.device)
    tokens[:, 0] = first_step
    actions = model.forward_joint(frames, tokens, with_logits=False).actions  # (B, T, 4, F, J)
    for _ in range(T - 2):
        actions = model.rollout_pass(frames, tokens, actions)
    return actions[:, 1:, :3].permute(0, 1, 3, 4, 2).flatten(1, 2).float()  # (B, (T - 1) * F, J, 3)
