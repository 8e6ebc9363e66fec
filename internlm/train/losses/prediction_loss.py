"""L_pred: the student's state-prediction output at step t against the teacher's representation of frame t+1
(paper eq. 2), the same cross-entropy as DINO with its own centre (PredictionLoss owns it)."""

from __future__ import annotations

import torch

from .dino_loss import DINOLoss, cross_entropy, teacher_probs


def prediction_loss(student_pred_logits: torch.Tensor, teacher_frame_logits: torch.Tensor, center: torch.Tensor,
                    teacher_temp: float, student_temp: float) -> torch.Tensor:
    """student_pred_logits (B, T, K): prediction head at the future-state query of every step;
    teacher_frame_logits (B, T, K): teacher representation of every step's frame.
    Step t is matched with frame t+1 for t = 0..T-2; mean over steps and batch."""
    targets = teacher_probs(teacher_frame_logits[:, 1:], center, teacher_temp)  # (B, T-1, K)
    return cross_entropy(targets, student_pred_logits[:, :-1], student_temp).mean()


def prediction_minimiser(teacher_logits: torch.Tensor, center: torch.Tensor, teacher_temp: float,
                         student_temp: float) -> torch.Tensor:
    """(..., K) the teacher's logits of an image -> the student logits that minimise L_pred had that image been the
    target, (tau_s / tau_t)(l_T - c). Of frame t it is the "nothing changes" prediction (the copy baseline); of
    frame t reprojected by the step's rotation, the reprojection baseline; either is the base of the residual state
    prediction (train/prediction_base.py); of frame t+1, the oracle."""
    logits = teacher_logits.float()
    return (student_temp / teacher_temp) * (logits - center.to(logits.device).float())


class PredictionLoss(DINOLoss):
    """L_pred with its centre (the EMA of the teacher's logits of the target frames; DINOLoss's update)."""

    def forward(self, student_pred_logits: torch.Tensor, teacher_frame_logits: torch.Tensor,
                teacher_temp: float) -> torch.Tensor:
        return prediction_loss(student_pred_logits, teacher_frame_logits, self.center, teacher_temp, self.student_temp)
