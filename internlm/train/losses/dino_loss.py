"""L_rep: the DINO multi-crop loss (paper eq. 3; Caron et al. 2021), and DINOLoss, which owns its centre.

Every (teacher view, student view) pair except a view with itself contributes
H(softmax((t - c) / tau_t), log_softmax(s / tau_s)); the loss is the mean over pairs and batch. The centre c is an
EMA of the teacher's logits (loss.center_momentum), updated after each applied optimizer step.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def teacher_probs(teacher_logits: torch.Tensor, center: torch.Tensor, temp: float) -> torch.Tensor:
    """(..., K) centered, sharpened teacher distribution, computed in fp32."""
    return F.softmax((teacher_logits.float() - center) / temp, dim=-1)


def cross_entropy(target_probs: torch.Tensor, student_logits: torch.Tensor, student_temp: float) -> torch.Tensor:
    """(..., K), (..., K) -> (...,): H(p, softmax(s / tau_s)) per sample."""
    return -(target_probs * F.log_softmax(student_logits.float() / student_temp, dim=-1)).sum(dim=-1)


def dino_multicrop_loss(student_views: Sequence[torch.Tensor], teacher_views: Sequence[torch.Tensor],
                        center: torch.Tensor, teacher_temp: float, student_temp: float) -> torch.Tensor:
    """student_views: V_s tensors (B, K), the first ones being the same global views the teacher saw;
    teacher_views: V_t tensors (B, K). Returns the scalar mean over the V_t * V_s - V_t pairs and the batch."""
    targets = [teacher_probs(t, center, teacher_temp) for t in teacher_views]
    total, pairs = 0.0, 0
    for it, q in enumerate(targets):
        for iv, s in enumerate(student_views):
            if iv == it:  # a view is not its own target
                continue
            total = total + cross_entropy(q, s, student_temp).mean()
            pairs += 1
    return total / pairs


class DINOLoss(nn.Module):
    """L_rep with its centre: ``center`` (K,) is a buffer (saved with the training state), ``update_center`` its EMA
    step from the teacher logits of one optimizer step."""

    def __init__(self, num_prototypes: int, student_temp: float, center_momentum: float):
        super().__init__()
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(num_prototypes))

    def forward(self, student_views: Sequence[torch.Tensor], teacher_views: Sequence[torch.Tensor],
                teacher_temp: float) -> torch.Tensor:
        return dino_multicrop_loss(student_views, teacher_views, self.center, teacher_temp, self.student_temp)

    def teacher_probs(self, teacher_logits: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        return teacher_probs(teacher_logits, self.center, teacher_temp)

    @torch.no_grad()
    def update_center(self, logit_sum: torch.Tensor, count) -> None:
        """c = m c + (1 - m) mean teacher logits; ``logit_sum`` (K,) and ``count`` (a number or a device tensor)
        over every rank's share of the step."""
        m = self.center_momentum
        self.center.mul_(m).add_(logit_sum / count, alpha=1 - m)
