"""EgoAgent model: InternLM backbone, projectors, query tokens and heads."""

from .attention import AttentionBackendError, MaskLayout
from .egoagent import AgentOutput, EgoAgent, JointOutput, RepresentationOutput

__all__ = ["AgentOutput", "AttentionBackendError", "EgoAgent", "JointOutput", "MaskLayout", "RepresentationOutput"]
