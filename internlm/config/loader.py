"""Read an InternLM-style python config file into a validated TrainConfig.

A config is a python file; its module-level names are the config. Upper-case names are constants (kept,
unchecked, in ``TrainConfig.constants``); lower-case names must be sections of the schema. String values may
carry InternLM's ``local:`` prefix, which is removed.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import difflib
import inspect
import os
import runpy
from typing import Any, Iterable, Optional

from .schema import TrainConfig, validate
from .typed import ConfigError, build

LOCAL_PREFIX = "local:"
_REMOTE_PREFIXES = ("boto3:", "s3:", "oss:", "volc:")


def _strip_local(value: Any, where: str) -> Any:
    if isinstance(value, str):
        if value.startswith(LOCAL_PREFIX):
            return value[len(LOCAL_PREFIX):]
        for prefix in _REMOTE_PREFIXES:
            if value.startswith(prefix):
                raise ConfigError(f"{where}={value!r}: only local paths are supported (remote prefix '{prefix}')")
        return value
    if isinstance(value, dict):
        return {k: _strip_local(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_strip_local(v, f"{where}[{i}]") for i, v in enumerate(value))
    return value


def read_config_namespace(path: str) -> dict[str, Any]:
    """Execute the config file and return its public module-level names (modules and functions dropped)."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    namespace = runpy.run_path(path, run_name="__config__")
    out = {}
    for name, value in namespace.items():
        if name.startswith("_") or inspect.ismodule(value) or inspect.isfunction(value) or inspect.isclass(value):
            continue
        out[name] = value
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """``data.total_steps=50`` -> ("data.total_steps", 50); the value is a python literal or a bare string."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. data.total_steps=50")
    key, raw = text.split("=", 1)
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return key.strip(), value


def _apply_override(raw: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {key}: '{'.'.join(parts[:i + 1])}' is not a section")
        node = child
    node[parts[-1]] = value


def load_config(path: str, overrides: Optional[Iterable[tuple[str, Any]]] = None) -> TrainConfig:
    """Load, override (dotted keys), type-check and validate a config file."""
    namespace = read_config_namespace(path)
    return config_from_namespace(namespace, overrides, source_file=os.path.abspath(path))


def config_from_namespace(namespace: dict[str, Any], overrides: Optional[Iterable[tuple[str, Any]]] = None,
                          source_file: Optional[str] = None) -> TrainConfig:
    namespace = copy.deepcopy(namespace)
    for key, value in overrides or ():
        _apply_override(namespace, key, value)
    section_names = {f.name for f in dataclasses.fields(TrainConfig)} - {"constants", "source_file"}
    constants, sections = {}, {}
    where = source_file or "<config>"
    for name, value in namespace.items():
        if name in section_names:
            sections[name] = _strip_local(value, name)
        elif name.isupper():
            constants[name] = value
        else:
            close = difflib.get_close_matches(name, sorted(section_names), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"unknown top-level name '{name}' in {where}{hint}")
    try:
        cfg = build(TrainConfig, sections, "")
    except ConfigError as exc:
        raise ConfigError(f"{exc} [{where}]") from None
    cfg.constants = constants
    cfg.source_file = source_file
    try:
        validate(cfg)
    except ConfigError as exc:
        raise ConfigError(f"{exc} [{where}]") from None
    return cfg


def config_from_resolved(resolved: dict[str, Any]) -> TrainConfig:
    """Rebuild a TrainConfig from the JSON written with every run and checkpoint (``to_dict`` of a config)."""
    sections = dict(resolved)
    constants = sections.pop("constants", {}) or {}
    source_file = sections.pop("source_file", None)
    cfg = build(TrainConfig, sections, "")
    cfg.constants = constants
    cfg.source_file = source_file
    validate(cfg)
    return cfg
