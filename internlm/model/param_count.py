"""Parameter counts of an EgoAgent config, without allocating the weights (meta device)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from internlm.config.schema import ModelConfig

from .egoagent import EgoAgent

HEAD_PREFIXES = ("rep_head.", "pred_head.", "action_head.")


@dataclass
class ParamCount:
    backbone: int  # transformer blocks + final norm
    projectors: int  # image/action projectors + query tokens
    heads: int  # DINO heads + action head (not counted in the paper's model size)

    @property
    def model(self) -> int:
        """What paper Table 7 calls the model size: backbone + projectors."""
        return self.backbone + self.projectors


def count_parameters(model_cfg: ModelConfig, joint: bool) -> ParamCount:
    """The parameters of EgoAgent(model_cfg, joint) (joint: the stage-2 model)."""
    with torch.device("meta"):
        model = EgoAgent(model_cfg, joint=joint)
    backbone = projectors = heads = 0
    for name, p in model.named_parameters():
        if name.startswith("backbone."):
            backbone += p.numel()
        elif name.startswith(HEAD_PREFIXES):
            heads += p.numel()
        else:
            projectors += p.numel()
    return ParamCount(backbone, projectors, heads)


def human(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.0f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"
