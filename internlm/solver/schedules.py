"""Per-step schedules (paper Table 9, DINO, InternLM): learning rate, weight decay, teacher momentum, teacher
temperature, Adam's beta2.

Each is a closed-form function of the optimizer step s in [0, total - 1], so resuming needs only the step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from internlm.config.schema import TrainConfig


def _cosine(start: float, end: float, progress: float) -> float:
    """start at progress 0, end at progress 1."""
    progress = min(max(progress, 0.0), 1.0)
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def learning_rate(step: int, base: float, eta_min: float, total: int, warmup: int) -> float:
    """Linear warm-up base * (s + 1) / W for s < W, then cosine from base (s = W) to eta_min (s = total - 1)."""
    if step < warmup:
        return base * (step + 1) / warmup
    span = max(total - 1 - warmup, 1)
    return _cosine(base, eta_min, (step - warmup) / span)


def weight_decay(step: int, start: float, end: float, total: int) -> float:
    """Cosine from start (s = 0) to end (s = total - 1): 0.04 -> 0.4."""
    return _cosine(start, end, step / max(total - 1, 1))


def teacher_momentum(step: int, start: float, end: float, total: int) -> float:
    """Cosine from 0.996 (s = 0) to 1 (s = total - 1), then 1."""
    return _cosine(start, end, step / max(total - 1, 1))


def teacher_temperature(step: int, warmup_temp: float, temp: float, warmup_steps: int) -> float:
    """Linear from warmup_temp (s = 0) to temp (s = warmup_steps), then constant."""
    if step >= warmup_steps:
        return temp
    return warmup_temp + (temp - warmup_temp) * step / warmup_steps


def adam_beta2(step: int, first: float, floor: float, c: float) -> float:
    """InternLM's Beta2Scheduler: the first step uses adam.adam_beta2; after k >= 1 steps max(floor, 1 - k^-c)
    (floor = beta2_scheduler.init_beta2), or the floor itself when c = 0."""
    if step == 0:
        return first
    return max(floor, 1.0 - step ** -c) if c > 0 else floor


@dataclass(frozen=True)
class ScheduleValues:
    lr: float
    weight_decay: float
    momentum: float
    teacher_temp: float
    beta2: float


@dataclass(frozen=True)
class Schedules:
    base_lr: float
    eta_min: float
    total: int
    warmup: int
    wd_start: float
    wd_end: float
    momentum_start: float
    momentum_end: float
    momentum_steps: int
    warmup_temp: float
    temp: float
    temp_warmup_steps: int
    beta2_first: float
    beta2_floor: float
    beta2_c: float

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> "Schedules":
        total = cfg.data.total_steps
        loss, ms = cfg.loss, cfg.momentum_scheduler
        # The authors count the temperature warm-up and the momentum cosine in epochs; an epoch is
        # total_steps / loss.epochs steps here.
        steps_per_epoch = total / loss.epochs if loss.epochs > 0 else float(total)
        temp_warmup = int(round(steps_per_epoch * loss.warmup_teacher_temp_epochs)) if loss.epochs > 0 else 0
        momentum_steps = int(round(steps_per_epoch * ms.epochs)) if ms.epochs is not None else total
        b2 = cfg.beta2_scheduler
        return cls(cfg.adam.lr, cfg.lr_scheduler.eta_min, total, cfg.lr_scheduler.resolved_warmup_steps(),
                   cfg.adam.weight_decay, cfg.adam.weight_decay_end, ms.momentum_teacher, ms.momentum_teacher_end,
                   momentum_steps, loss.warmup_teacher_temp, loss.teacher_temp, temp_warmup, cfg.adam.adam_beta2,
                   cfg.adam.adam_beta2 if b2.init_beta2 is None else b2.init_beta2, b2.c)

    def at(self, step: int) -> ScheduleValues:
        return ScheduleValues(
            lr=learning_rate(step, self.base_lr, self.eta_min, self.total, self.warmup),
            weight_decay=weight_decay(step, self.wd_start, self.wd_end, self.total),
            momentum=teacher_momentum(step, self.momentum_start, self.momentum_end, self.momentum_steps),
            teacher_temp=teacher_temperature(step, self.warmup_temp, self.temp, self.temp_warmup_steps),
            beta2=adam_beta2(step, self.beta2_first, self.beta2_floor, self.beta2_c),
        )
