"""L_rep: the DINO multi-crop loss (paper eq. 3; Caron et al. 2021).

Every (teacher view, student view) pair except a view with itself contributes
H(softmax((t - c) / tau_t), log_softmax(s / tau_s)); the loss is the mean over pairs and batch.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


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
