"""Dynamic loss scaling for fp16 (InternLM semantics): on an overflow the step is skipped, and after
``hysteresis`` overflows the scale is multiplied by backoff_factor (not below min_scale); after growth_interval
clean steps it is multiplied by growth_factor (not above max_scale) and the hysteresis budget is restored."""

from __future__ import annotations

from internlm.config.schema import GradScalerConfig


class DynamicLossScaler:
    def __init__(self, cfg: GradScalerConfig, enabled: bool):
        self.enabled = enabled
        self.growth_factor = cfg.growth_factor
        self.backoff_factor = cfg.backoff_factor
        self.growth_interval = cfg.fp16.growth_interval
        self.min_scale = cfg.fp16.min_scale
        self.max_scale = cfg.max_scale
        self.hysteresis = cfg.hysteresis
        self.scale = float(cfg.fp16.initial_scale) if enabled else 1.0
        self._growth_tracker = 0
        self._hysteresis_left = cfg.hysteresis
        self.overflowed_at_min_scale = False  # the last update: an overflow the scale can no longer back off from

    def update(self, found_inf: bool) -> None:
        if not self.enabled:
            return
        self.overflowed_at_min_scale = found_inf and self.scale <= self.min_scale
        if found_inf:
            self._growth_tracker = 0
            self._hysteresis_left -= 1
            if self._hysteresis_left <= 0:
                self.scale = max(self.scale * self.backoff_factor, self.min_scale)
            return
        self._growth_tracker += 1
        if self._growth_tracker >= self.growth_interval:
            self._growth_tracker = 0
            self._hysteresis_left = self.hysteresis
            self.scale = min(self.scale * self.growth_factor, self.max_scale)

    def state_dict(self) -> dict:
        return {"scale": self.scale, "growth_tracker": self._growth_tracker, "hysteresis_left": self._hysteresis_left}

    def load_state_dict(self, state: dict) -> None:
        self.scale = float(state["scale"])
        self._growth_tracker = int(state["growth_tracker"])
        self._hysteresis_left = int(state["hysteresis_left"])
