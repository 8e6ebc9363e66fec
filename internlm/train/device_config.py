"""What a run's config becomes on the device it runs on (train.py, after the command line's overrides)."""

from __future__ import annotations

import dataclasses

import torch

from internlm.config import TrainConfig
from internlm.model.attention import AttentionBackendError
from internlm.model.egoagent import check_backend_can_train

from .meta_arch import AUTOCAST_DTYPES


def follow_device(cfg: TrainConfig, device, overridden, notices: list[str]) -> TrainConfig:
    """The attention backend follows the device where the file's cannot run there on a CPU (FlexAttention has no
    CPU backward, flash-attn no CPU kernel): PyTorch's sdpa instead, with a notice. A backend given on the
    command line (``--opt model.attn_backend=...``) or any backend on a GPU is left to fail loudly with its reason."""
    device = torch.device(device)
    if device.type != "cpu":
        return cfg
    for section, trains in (("model", True), ("teacher", False)):
        model = getattr(cfg, section)
        if model is None or any(f"{section}.{k}" in overridden for k in ("attn_backend", "use_flash_attn")):
            continue
        try:
            check_backend_can_train(model, cfg.loss.is_joint, device, AUTOCAST_DTYPES.get(model.dtype, torch.float32),
                                    needs_grad=trains)
        except AttentionBackendError as err:
            setattr(cfg, section, dataclasses.replace(model, attn_backend="sdpa", use_flash_attn=False))
            notices.append(f"{section}.attn_backend follows the device: {model.resolved_attn_backend!r} -> 'sdpa' "
                           f"on this CPU ({err})")
    return cfg
