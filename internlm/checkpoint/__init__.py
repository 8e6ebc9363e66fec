"""Checkpoints: layout, atomic writes, the unsharded weight files, and the training-state saver."""

from .layout import complete_steps, is_complete, latest_checkpoint, resolve_checkpoint
from .weights import load_model, load_state_dict, save_weights_only

__all__ = ["complete_steps", "is_complete", "latest_checkpoint", "load_model", "load_state_dict",
           "resolve_checkpoint", "save_weights_only"]
