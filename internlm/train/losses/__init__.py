"""One small file per loss: L_rep (dino_loss), L_pred (prediction_loss), L_act (action_loss)."""

from .action_loss import action_loss, visible_elements
from .dino_loss import DINOLoss, dino_multicrop_loss, teacher_probs
from .prediction_loss import PredictionLoss, prediction_loss, prediction_minimiser

__all__ = ["DINOLoss", "PredictionLoss", "action_loss", "dino_multicrop_loss", "prediction_loss",
           "prediction_minimiser", "teacher_probs", "visible_elements"]
