"""Read an InternLM-style python config file into a validated TrainConfig.

A config is a python file; its module-level names are the config. Upper-case names are constants (kept,
unchecked, in ``TrainConfig.constants``); lower-case names must be sections of the schema. String values may
carry InternLM's ``local:`` prefix, which is removed. Keys of InternLM plumbing that mean nothing here are
accepted and dropped (``ACCEPTED_NO_EFFECT``, the one list of them); every other key must be a field of the schema.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import difflib
import inspect
import os
import re
import runpy
from typing import Any, Iterable, Optional

from .follow import MISSING, Follower, get, put
from .schema import TrainConfig, validate
from .typed import ConfigError, build, to_dict

LOCAL_PREFIX = "local:"
_REMOTE_PREFIXES = ("boto3:", "s3:", "oss:", "volc:")

_NO_TP = "no tensor parallelism here (parallel.tensor must be 1)"
_MODEL_NO_EFFECT = {
    "embed_split_hidden": f"InternLM: how the token embedding is split across tensor-parallel ranks; {_NO_TP}",
    "parallel_output": f"InternLM: whether the output logits stay split across tensor-parallel ranks; {_NO_TP}",
    "vocab_size": "the VQGAN codebook size, read only by the VQGAN token embedding (lvm_config.enable, not built)",
    "lvm_config.embedding_cfg": "settings of the VQGAN token embedding (not built: lvm_config.enable must be False)",
    "lvm_config.encoder_cfg": "settings of the VQGAN encoder (not built: lvm_config.enable_encoder must be False)",
}
# Keys of the authors' (InternLM's) configs that configure machinery with no counterpart here. They are accepted
# with any value and have no effect; docs/configs.md lists them. Any other key takes effect or, set to
# a value that is not implemented, stops with a ConfigError.
ACCEPTED_NO_EFFECT: dict[str, str] = {
    **{f"{section}.{key}": why for section in ("model", "teacher") for key, why in _MODEL_NO_EFFECT.items()},
    "data.min_length": "InternLM drops text samples shorter than this many tokens; image samples have fixed lengths",
    "data.padding_token": "InternLM's text padding token; image samples are never padded",
    "data.empty_cache_and_diag_interval": "InternLM's periodic CUDA cache flush and slow-rank diagnosis",
    "data.diag_outlier_ratio": "the threshold of InternLM's slow-rank diagnosis",
    "hybrid_zero_optimizer.overlap_sync_grad": "InternLM's ZeRO overlap of gradient reduction and backward; DDP and "
                                               "FSDP2 overlap them always",
    "hybrid_zero_optimizer.overlap_sync_param": "InternLM's ZeRO overlap of parameter broadcast and forward",
    "parallel.pipeline.interleaved_overlap": "InternLM's interleaved-pipeline communication (pipeline size must be 1)",
    "parallel.tensor.mode": f"InternLM's flavour of tensor parallelism; {_NO_TP}",
    "ckpt.async_upload": "InternLM's background upload of checkpoints to an object store; checkpoints are local files",
    "ckpt.async_upload_tmp_folder": "the staging folder of that upload",
    "ckpt.oss_snapshot_freq": "InternLM's periodic snapshots to an object store",
    "monitor.alert": "InternLM's Feishu / light-monitor alerting",
    "teacher_ckpt_folder": "InternLM-KD's folder of a fixed teacher to distil from; the teacher here is the student's "
                           "EMA, saved in every checkpoint (and in ckpt.save_teacher_ckpt_folder when set)",
}


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
    key, eq, raw = text.partition("=")
    if not eq or not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", key.strip()):
        raise ConfigError(f"--opt {text!r}: expected KEY=VALUE with a dotted key, e.g. --opt data.total_steps=50")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return key.strip(), value


def _lookup(tree: dict, key: str) -> tuple[bool, Any]:
    value = get(tree, key)
    return value is not MISSING, (None if value is MISSING else value)


def drop_accepted_no_effect(tree: dict[str, Any]) -> list[str]:
    """Remove the ``ACCEPTED_NO_EFFECT`` keys from a config tree; returns those found. The sections on the way are
    copied first: a file's sections share dicts (teacher = dict(MODEL)) with each other and its constants."""
    found = []
    for key in ACCEPTED_NO_EFFECT:
        parent, _, leaf = key.rpartition(".")
        present, node = _lookup(tree, parent) if parent else (True, tree)
        if present and isinstance(node, dict) and leaf in node:
            if parent:
                put(tree, parent, {k: v for k, v in node.items() if k != leaf})
            else:
                del tree[leaf]
            found.append(key)
    return found


def _names(message: str, key: str) -> bool:
    """Whether a ConfigError message is about ``key`` (or a key inside it)."""
    parent, _, leaf = key.rpartition(".")
    return bool(re.search(rf"(?<![\w.]){re.escape(key)}(?!\w)", message)) or \
        f"'{leaf}' in section '{parent}'" in message or f"top-level name '{key.split('.')[0]}'" in message


def _source_of(message: str, overrides: dict[str, Any], followed: dict[str, str], where: str) -> str:
    """The --opt an error is about, else the file."""
    blamed = [k for k in overrides if _names(message, k)]
    blamed += [by for k, by in followed.items() if _names(message, k) and by not in blamed]
    if blamed:
        return ", ".join(f"--opt {k}={overrides[k]!r}" if isinstance(overrides[k], str) else
                         f"--opt {k}={overrides[k]}" for k in blamed)
    return where


def load_config(path: str, overrides: Optional[Iterable[tuple[str, Any]]] = None,
                notices: Optional[list[str]] = None) -> TrainConfig:
    """Load, override (dotted keys), type-check and validate a config file. What follows an override (the
    teacher, restated copies, the schedule; config/follow.py) is appended to ``notices``, one line each."""
    namespace = read_config_namespace(path)
    return config_from_namespace(namespace, overrides, source_file=os.path.abspath(path), notices=notices)


def config_from_namespace(namespace: dict[str, Any], overrides: Optional[Iterable[tuple[str, Any]]] = None,
                          source_file: Optional[str] = None, notices: Optional[list[str]] = None) -> TrainConfig:
    """A config's module-level names, overridden, type-checked and validated. An error names the --opt that caused
    it, else the file."""
    overridden = dict(overrides or ())
    where = source_file or "<config>"
    follower = Follower(namespace, overridden)
    try:
        namespace = follower.run()
    except ConfigError as exc:
        raise ConfigError(f"{exc} [{_source_of(str(exc), overridden, follower.followed, where)}]") from None
    followed = follower.followed
    if notices is not None:
        notices.extend(follower.notices)
    drop_accepted_no_effect(namespace)
    section_names = {f.name for f in dataclasses.fields(TrainConfig)} - {"constants", "source_file"}
    constants, sections = {}, {}
    try:
        for name, value in namespace.items():
            if name in section_names:
                sections[name] = _strip_local(value, name)
            elif name.isupper():
                constants[name] = value
            else:
                close = difflib.get_close_matches(name, sorted(section_names), n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise ConfigError(f"unknown top-level name '{name}'{hint}")
        cfg = build(TrainConfig, sections, "")
        cfg.constants = constants
        cfg.source_file = source_file
        validate(cfg)
    except ConfigError as exc:
        message = str(exc)
        if "lr_scheduler.total_steps" in overridden and "data.total_steps" not in overridden and \
                "differs from data.total_steps" in message:
            message += f"; add --opt data.total_steps={overridden['lr_scheduler.total_steps']}"
        raise ConfigError(f"{message} [{_source_of(message, overridden, followed, where)}]") from None
    return cfg


def with_overrides(cfg: TrainConfig, overrides: Iterable[tuple[str, Any]]) -> TrainConfig:
    """A loaded config with more dotted-key overrides, type-checked and validated again (what --opt does)."""
    resolved = to_dict(cfg)
    constants = resolved.pop("constants", {}) or {}
    source_file = resolved.pop("source_file", None)
    return config_from_namespace({**resolved, **constants}, overrides, source_file=source_file)


# Keys that only restate others, and that configs written before they defaulted to None stored with stale defaults.
_RESTATING_KEYS = ("data.frames_per_clip", "data.num_frame_tokens", "loss.batch_size", "loss.global_token_len",
                   "loss.local_token_len", "loss.nframes", "kd_config.gt_weight", "kd_config.kd_weight",
                   "kd_config.type", "kd_config.temperature")


def config_from_resolved(resolved: dict[str, Any]) -> TrainConfig:
    """Rebuild a TrainConfig from the JSON written with every run and checkpoint (``to_dict`` of a config)."""
    sections = copy.deepcopy(resolved)
    constants = sections.pop("constants", {}) or {}
    source_file = sections.pop("source_file", None)
    drop_accepted_no_effect(sections)
    for key in _RESTATING_KEYS:  # what they restate is stored too
        parent, _, leaf = key.rpartition(".")
        present, node = _lookup(sections, parent) if parent else (True, sections)
        if present and isinstance(node, dict) and leaf in node:
            node[leaf] = None
    if sections.get("loss", {}).get("name") == "joint" and sections.get("data", {}).get("use_egoexo") is False:
        sections["data"]["use_egoexo"] = None  # the old default, meaningless in stage 2
    cfg = build(TrainConfig, sections, "")
    cfg.constants = constants
    cfg.source_file = source_file
    validate(cfg)
    return cfg
