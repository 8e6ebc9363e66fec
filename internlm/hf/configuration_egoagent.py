"""Hugging Face config of the EgoAgent image encoder (written by tools/convert2hf_dino_conv_stem_cls.py).

Self-contained (imports transformers only): it is copied into every exported folder.
"""

from transformers import PretrainedConfig


class EgoAgentConfig(PretrainedConfig):
    """Architecture of the representation branch: conv stem -> [image tokens, state query] -> InternLM backbone ->
    final RMSNorm; the feature is the output at the state query; optional DINO representation head."""

    model_type = "egoagent"

    def __init__(self, hidden_size: int = 1024, num_layers: int = 22, num_attention_heads: int = 8,
                 mlp_ratio: float = 8 / 3, layer_norm_epsilon: float = 1e-6, rope_base: float = 10000.0,
                 image_size: int = 224, patch_size: int = 16, causal: bool = True, perframe_atten: bool = True,
                 with_rep_head: bool = True, output_dim: int = 65536, head_hidden_dim: int = 2048,
                 head_bottleneck_dim: int = 256, norm_last_layer: bool = True, attn_backend: str = "sdpa",
                 source_checkpoint: str = "", source_weights: str = "teacher", **kwargs):
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.num_attention_heads = num_attention_heads
        self.mlp_ratio = mlp_ratio
        self.layer_norm_epsilon = layer_norm_epsilon
        self.rope_base = rope_base
        self.image_size = image_size  # the training crop size (other multiples of patch_size work too)
        self.patch_size = patch_size
        self.causal = causal
        self.perframe_atten = perframe_atten
        self.with_rep_head = with_rep_head
        self.output_dim = output_dim
        self.head_hidden_dim = head_hidden_dim
        self.head_bottleneck_dim = head_bottleneck_dim
        self.norm_last_layer = norm_last_layer
        self.attn_backend = attn_backend  # sdpa | flex | flash (see attention.py)
        self.source_checkpoint = source_checkpoint  # provenance: the training checkpoint folder
        self.source_weights = source_weights  # "teacher" or "model" (student)
        super().__init__(**kwargs)
