"""The Hugging Face export of EgoAgent's image encoder (tools/convert2hf_dino_conv_stem_cls.py).

``modeling_egoagent.py`` imports the backbone with relative imports (``from .modeling_internlm import ...``)
because in an exported folder those files sit next to it (the converter copies them from internlm/model). In
this repository the same names are mapped to internlm/model's modules here, so the model file also imports in
place (tests, the converter's check) with one source of truth for the backbone.
"""

import sys

from ..model import attention, heads, modeling_internlm, norm, projectors, rotary

# Files the exported folder needs, besides this package's configuration_egoagent.py and modeling_egoagent.py.
BACKBONE_MODULES = (modeling_internlm, attention, norm, rotary, projectors, heads)

for _module in BACKBONE_MODULES:
    sys.modules.setdefault(f"{__name__}.{_module.__name__.rsplit('.', 1)[1]}", _module)
