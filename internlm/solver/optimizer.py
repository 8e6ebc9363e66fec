"""AdamW with InternLM/DINO parameter groups: no weight decay on biases, norms, 1-D parameters and query tokens."""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from internlm.config.schema import AdamConfig

DECAY, NO_DECAY = 0, 1  # group indices; the weight-decay schedule writes into group DECAY


def split_decay_groups(named_params: Iterable[tuple[str, nn.Parameter]]) -> tuple[list, list]:
    """(decay, no_decay) lists of trainable parameters."""
    decay, no_decay = [], []
    for name, p in named_params:
        if not p.requires_grad:
            continue
        # query tokens are 1-D too; named here so the rule reads as the paper states it
        if p.ndim <= 1 or name.endswith(".bias") or "norm" in name or name.endswith("_query"):
            no_decay.append(p)
        else:
            decay.append(p)
    return decay, no_decay


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = split_decay_groups(model.named_parameters())
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def adamw_kwargs(cfg: AdamConfig, device: torch.device) -> dict:
    fused = cfg.fused if cfg.fused is not None else device.type == "cuda"
    kwargs = dict(lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps)
    if fused:
        kwargs["fused"] = True
    else:
        kwargs["foreach"] = True
    return kwargs


def apply_schedule(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float, beta2: float) -> None:
    for i, group in enumerate(optimizer.param_groups):
        group["lr"] = lr
        group["weight_decay"] = weight_decay if i == DECAY else 0.0
        group["betas"] = (group["betas"][0], beta2)
