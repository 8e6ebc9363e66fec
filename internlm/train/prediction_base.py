"""The residual state prediction in one place: its base, the share of the learned change added to it, and how that
share is chosen (model.prediction_residual, model.prediction_reprojection, data.calibration_takes).

With model.prediction_residual, EgoAgent's state-prediction head outputs a *change* (JointOutput.future_logits,
zero at initialisation); the prediction at step t of frame t+1 is

    base + change_scale * change                                                   (B, T, K) student logits

- base: the student logits that minimise L_pred had frame t+1 been the teacher's view of frame t
  (losses.prediction_minimiser, "nothing changes"); with model.prediction_reprojection, of frame t reprojected by
  the step's camera rotation (model/reprojection.py, "only the camera turns").
- change_scale: 1 in training; with data.calibration_takes, the scale in CALIBRATION_SCALES with the lowest L_pred
  on clips of held-out training takes, chosen after the last step (ResidualPrediction.calibrate) and saved in the
  checkpoint's meta.json (older checkpoints: a buffer in the weights, checkpoint/weights.py reads it).

The training step (train/meta_arch.py), the retrieval eval (eval/retrieval.py) and tools/diagnose_prediction.py all
build the prediction through ResidualPrediction, so that they compute the same thing.
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence

import torch

from internlm.checkpoint.layout import CHANGE_SCALE_KEY
from internlm.config.schema import ModelConfig
from internlm.model.reprojection import reproject_steps
from internlm.parallel.data_parallel import all_reduce_

from .losses import prediction_loss, prediction_minimiser

# data.calibration_takes: the scales of the learned change tried on the held-out takes
CALIBRATION_SCALES = tuple(i / 20 for i in range(21))
# a scale is kept only if it lowers L_pred by more than float32 noise (nats) against a smaller one
CALIBRATION_TOLERANCE = 1e-5


def choose_scale(scales: Sequence[float], l_pred: Sequence[float]) -> float:
    """The smallest scale whose L_pred is within CALIBRATION_TOLERANCE of the lowest: a change that does not
    measurably help stays out."""
    lowest = min(l_pred)
    return float(min(a for a, v in zip(scales, l_pred) if v <= lowest + CALIBRATION_TOLERANCE))


class ResidualPrediction:
    """The state prediction built from EgoAgent's head output, for one model config. Without
    model.prediction_residual the head output is the prediction and there is no base."""

    def __init__(self, model_cfg: ModelConfig, change_scale: float = 1.0):
        self.enabled = bool(model_cfg.prediction_residual)
        self.reprojection = self.enabled and bool(model_cfg.prediction_reprojection)
        self.change_scale = float(change_scale)

    # ------------------------------------------------------------------------------------ the base

    def base_images(self, frames: torch.Tensor, camera_motion: Optional[torch.Tensor],
                    focal: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """frames (B, T, 3, P, P), camera_motion (B, T, 12), focal (B,) -> the images (B, T, 3, P, P) whose teacher
        view the base is made of when it is not the frames' own (model.prediction_reprojection: each step's frame
        seen through the step's camera rotation); None when the frames' own teacher logits serve."""
        if not self.reprojection:
            return None
        if camera_motion is None or focal is None:
            raise ValueError("model.prediction_reprojection: the base of the state prediction needs each step's camera "
                             "motion and the focal length (data.camera_motion=True)")
        return reproject_steps(frames, camera_motion, focal)

    def base(self, teacher_logits: torch.Tensor, center: torch.Tensor, teacher_temp: float,
             student_temp: float) -> Optional[torch.Tensor]:
        """(B, T, K) the teacher's logits of frame t (of base_images where it gives images) and the L_pred centre
        -> the base (B, T, K) fp32; None without model.prediction_residual."""
        if not self.enabled:
            return None
        return prediction_minimiser(teacher_logits, center, teacher_temp, student_temp)

    # ------------------------------------------------------------------------------------ the prediction

    def predict(self, head_output: torch.Tensor, base: Optional[torch.Tensor],
                scale: Optional[float] = None) -> torch.Tensor:
        """EgoAgent's state-prediction head output (B, T, K) -> the prediction: base + scale * change (scale: the
        calibrated change_scale by default) with model.prediction_residual, the head output itself otherwise."""
        if not self.enabled:
            return head_output
        if base is None:
            raise ValueError("model.prediction_residual=True: the state prediction is a change added to a base; pass "
                             "the base (ResidualPrediction.base of the teacher's logits of frame t)")
        a = self.change_scale if scale is None else scale
        return base.to(head_output.dtype) + a * head_output

    # ------------------------------------------------------------------------------------ calibration

    @torch.no_grad()
    def calibrate(self, clips: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], center: torch.Tensor,
                  teacher_temp: float, student_temp: float, scales: Sequence[float] = CALIBRATION_SCALES) -> dict:
        """clips: per batch of held-out clips (the teacher's logits of every frame, the base, the head's change), each
        (B, T, K). L_pred of base + a * change for every a in ``scales`` over all clips (and ranks: collective, every
        rank passes as many batches); sets change_scale to choose_scale's. Returns {"scales", "l_pred", "scale",
        "num_queries"}."""
        sums, count = None, 0
        for t_frames, base, change in clips:
            n = t_frames.shape[0] * (t_frames.shape[1] - 1)  # queries: steps 0..T-2
            losses = torch.stack([prediction_loss(self.predict(change.float(), base, a), t_frames, center,
                                                  teacher_temp, student_temp).double() * n for a in scales])
            sums, count = (losses if sums is None else sums + losses), count + n
        if sums is None:
            raise ValueError("no calibration batch")
        totals = all_reduce_(torch.cat([sums, sums.new_tensor([float(count)])]))
        l_pred = (totals[:-1] / totals[-1]).tolist()
        self.change_scale = choose_scale(scales, l_pred)
        return {"scales": [float(a) for a in scales], "l_pred": l_pred, "scale": self.change_scale,
                "num_queries": int(totals[-1])}

    # ------------------------------------------------------------------------------------ checkpoint

    def meta_state(self) -> dict:
        """What a checkpoint's meta.json keeps of this (the calibrated scale, with model.prediction_residual)."""
        return {CHANGE_SCALE_KEY: self.change_scale} if self.enabled else {}

    def load_meta_state(self, meta: dict) -> None:
        self.change_scale = float(meta.get(CHANGE_SCALE_KEY, 1.0))
