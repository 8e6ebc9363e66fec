"""Optimisation: AdamW parameter groups, per-step schedules, the fp16 dynamic loss scaler."""
