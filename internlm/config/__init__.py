"""Typed, strict configs read from InternLM-style python files."""

from .loader import config_from_resolved, load_config, parse_override, read_config_namespace, with_overrides
from .schema import (
    AdamConfig,
    CkptConfig,
    DataConfig,
    LossConfig,
    ModelConfig,
    ParallelConfig,
    TrainConfig,
)
from .typed import ConfigError, to_dict

__all__ = [
    "AdamConfig", "CkptConfig", "ConfigError", "DataConfig", "LossConfig", "ModelConfig", "ParallelConfig",
    "TrainConfig", "config_from_resolved", "load_config", "parse_override", "read_config_namespace", "to_dict",
    "with_overrides",
]
