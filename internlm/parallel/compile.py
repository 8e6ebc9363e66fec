"""torch.compile of the transformer blocks (model.compile), applied from outside the model like the parallel
wrappers: each InternLM block of the student and the teacher is compiled on its own (torchtitan's choice: one
small graph reused by every layer compiles fast and recompiles only per mask layout and shape)."""

from __future__ import annotations

import logging

import torch
from torch import nn

logger = logging.getLogger(__name__)


def compile_blocks(model: nn.Module) -> int:
    """Compile every InternLM block of ``model`` in place (inductor); returns how many. State-dict keys and
    parameters are unchanged, so checkpoints, the EMA update and the exports do not see it."""
    from internlm.model.modeling_internlm import InternLMBlock

    blocks = [m for m in model.modules() if isinstance(m, InternLMBlock)]
    for block in blocks:
        block.compile(backend="inductor", dynamic=False)
    return len(blocks)


def check_compile_available(device: torch.device) -> None:
    """Fail at start-up, with the reason, when inductor cannot compile here (it needs a C++ compiler on CPU and
    Triton on GPU)."""
    try:
        probe = torch.compile(lambda x: torch.nn.functional.silu(x) * 2, backend="inductor")
        probe(torch.ones(4, device=device))
    except Exception as exc:  # noqa: BLE001 - any failure means the same thing to the user
        raise RuntimeError(f"model.compile=True, but torch.compile (inductor) cannot run on {device}: "
                           f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}; set "
                           "model.compile=False") from exc
