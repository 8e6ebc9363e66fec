"""Hugging Face model of the EgoAgent image encoder (the representation branch of the trained model).

    model = transformers.AutoModel.from_pretrained(folder, trust_remote_code=True)
    out = model(pixel_values)            # (B, 3, H, W), ImageNet-normalised, H and W multiples of patch_size
    out.pooler_output                    # (B, d)  state-query output after the final RMSNorm (the kNN feature)
    out.last_hidden_state                # (B, H/p * W/p + 1, d)  all tokens, final-normed
    model(pixel_values, output_logits=True).logits   # (B, K) the DINO representation head

The backbone is NOT a second copy: tools/convert2hf_dino_conv_stem_cls.py copies the training code's torch-only
files (modeling_internlm.py, attention.py, norm.py, rotary.py, projectors.py, heads.py from internlm/model) next
to this file. Inside this repository, internlm/hf/__init__.py maps those relative imports to internlm/model.
Every sibling is imported here directly because transformers 4.x copies only the files that the model file
itself imports relatively.
"""

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from .attention import MaskLayout, representation_layout
from .configuration_egoagent import EgoAgentConfig
from .heads import DINOHead
from .modeling_internlm import InternLMBackbone
from .norm import RMSNorm  # noqa: F401  (imported so that transformers copies norm.py)
from .projectors import ImageProjector
from .rotary import RotaryEmbedding  # noqa: F401  (imported so that transformers copies rotary.py)


@dataclass
class EgoAgentEncoderOutput(ModelOutput):
    last_hidden_state: Optional[torch.FloatTensor] = None  # (B, N + 1, d)
    pooler_output: Optional[torch.FloatTensor] = None  # (B, d)
    logits: Optional[torch.FloatTensor] = None  # (B, K) when output_logits=True


class EgoAgentPreTrainedModel(PreTrainedModel):
    config_class = EgoAgentConfig
    base_model_prefix = "egoagent"
    main_input_name = "pixel_values"

    def _init_weights(self, module: nn.Module) -> None:
        """Nothing to do: every weight comes from the converted training checkpoint."""


class EgoAgentModel(EgoAgentPreTrainedModel):
    """Parameter names are the training model's (image_projector.*, state_query, backbone.*, rep_head.*)."""

    def __init__(self, config: EgoAgentConfig):
        super().__init__(config)
        d = config.hidden_size
        self.image_projector = ImageProjector(d, config.patch_size)
        self.state_query = nn.Parameter(torch.zeros(d))
        self.backbone = InternLMBackbone(d, config.num_layers, config.num_attention_heads, config.mlp_ratio,
                                         config.layer_norm_epsilon, config.rope_base, config.attn_backend)
        self.rep_head = (DINOHead(d, config.output_dim, config.head_hidden_dim, config.head_bottleneck_dim,
                                  config.norm_last_layer) if config.with_rep_head else None)
        self.post_init()

    def _layout(self, num_image_tokens: int) -> MaskLayout:
        return representation_layout(num_image_tokens, self.config.causal, self.config.perframe_atten)

    def forward(self, pixel_values: torch.Tensor, output_logits: bool = False, return_dict: Optional[bool] = None,
                **kwargs) -> EgoAgentEncoderOutput:
        """pixel_values (B, 3, H, W) -> EgoAgentEncoderOutput (a tuple when return_dict=False)."""
        dtype = self.image_projector.proj.weight.dtype
        tokens = self.image_projector(pixel_values.to(dtype))  # (B, N, d)
        B, N, d = tokens.shape
        x = torch.cat([tokens, self.state_query.to(dtype).expand(B, 1, d)], dim=1)  # (B, N + 1, d)
        hidden = self.backbone(x, self._layout(N))  # (B, N + 1, d), final-normed
        pooled = hidden[:, -1]  # (B, d)
        logits = None
        if output_logits:
            if self.rep_head is None:
                raise ValueError("this export has no representation head (converted with --no_rep_head)")
            logits = self.rep_head(pooled)  # (B, K)
        out = EgoAgentEncoderOutput(last_hidden_state=hidden, pooler_output=pooled, logits=logits)
        use_dict = return_dict if return_dict is not None else getattr(self.config, "return_dict", True)
        return out if use_dict else out.to_tuple()
