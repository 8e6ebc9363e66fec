"""What changed in the config since the checkpoint a run resumes from.

Every resolved key that differs from the checkpoint's config.json is listed as ``key: old -> new``, except where
the run writes, what it logs and how it validates (``NOT_COMPARED``). Changes of how the run executes
(``SAME_EXPERIMENT``: workers, parallelism, precision and kernels, checkpointing) are listed and go on. Every other
change makes it another experiment (the batch, lr and schedules, loss weights, the model, the data and its
augmentation) and stops the run, unless ``ckpt.allow_config_change=True``: then it is warned about and recorded in
the checkpoints' meta.json (``config_changes``). The global batch (data.micro_num x ranks) is compared as one key, so
a run may move to another number of ranks with the data.micro_num that keeps it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Optional

from internlm.checkpoint.layout import CONFIG_FILE, META_FILE, STUDENT_FILE
from internlm.checkpoint.train_state import CorruptCheckpointError
from internlm.checkpoint.weights import take_legacy_change_scale
from internlm.config import TrainConfig, config_from_resolved, to_dict

NOT_COMPARED = ("source_file", "constants", "ckpt.save_ckpt_folder", "ckpt.save_teacher_ckpt_folder",
                "ckpt.load_ckpt_info", "ckpt.load_ckpt_folder", "ckpt.allow_config_change", "monitor",
                "data.valid_every", "data.valid_micro_num", "data.valid_folder", "data.egoexo_valid_split")
RUNTIME_MODEL_KEYS = ("dtype", "attn_backend", "use_flash_attn", "checkpoint", "compile")
SAME_EXPERIMENT = ("ckpt", "parallel", "grad_scaler", "cudnn_deterministic", "cudnn_benchmark", "data.num_workers",
                   "data.micro_num", "data.gradient_accumulation", "loss.grad_accum", "loss.batch_size",
                   "hybrid_zero_optimizer.reduce_bucket_size", "hybrid_zero_optimizer.max_consecutive_skipped_steps",
                   "adam.fused") + tuple(f"{s}.{k}" for s in ("model", "teacher") for k in RUNTIME_MODEL_KEYS)
GLOBAL_BATCH = "global batch (data.micro_num x ranks)"


class ConfigChangeError(RuntimeError):
    """The resumed checkpoint was trained with another experiment's config; the message lists the keys."""


@dataclass(frozen=True)
class Change:
    key: str
    old: Any
    new: Any
    experiment: bool  # another experiment (stops the run unless ckpt.allow_config_change)
    hint: str = ""

    def __str__(self) -> str:
        return f"{self.key}: {_show(self.old)} -> {_show(self.new)}{f' ({self.hint})' if self.hint else ''}"

    def as_record(self) -> dict:
        """For meta.json: an absent value as None."""
        return {"key": self.key, "old": None if self.old is _ABSENT else self.old,
                "new": None if self.new is _ABSENT else self.new, "experiment": self.experiment}


def _show(value: Any) -> str:
    return "(absent)" if value is _ABSENT else json.dumps(value)


_ABSENT = object()


def _matches(key: str, prefixes: tuple) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def _resolved(tree: dict) -> dict:
    """A config.json through the current schema where it still reads (defaults of keys added since it was written
    filled in, so they do not count as changes), else as written; JSON types (tuples as lists)."""
    try:
        tree = to_dict(config_from_resolved(tree))
    except Exception:  # noqa: BLE001 (an old config the schema no longer takes: compare what it says)
        pass
    return json.loads(json.dumps(tree))


def _differences(old: Any, new: Any, key: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, old, new) of every leaf that differs; a key that is a section on one side and a value on the
    other (parallel.zero1: 1 or dict(size=-1, fsdp=True)) is one difference."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new)):
            out += _differences(old.get(k, _ABSENT), new.get(k, _ABSENT), f"{key}.{k}" if key else k)
        return out
    return [] if old == new else [(key, old, new)]


def compare(saved: dict, cfg: TrainConfig) -> list[Change]:
    """The changes from a checkpoint's resolved config (``saved``, its config.json) to ``cfg``."""
    return [Change(key, a, b, experiment=not _matches(key, SAME_EXPERIMENT))
            for key, a, b in _differences(_resolved(saved), _resolved(to_dict(cfg))) if not _matches(key, NOT_COMPARED)]


def global_batch_change(saved_micro: int, saved_world: int, cfg: TrainConfig, world: int) -> Optional[Change]:
    """The global batch as one key: another data.micro_num on another number of ranks may keep it."""
    old, new = saved_micro * saved_world, cfg.data.micro_num * world
    if old == new:
        return None
    if old % world:
        keep = f"no data.micro_num keeps {old} on {world} rank{'s' if world > 1 else ''}"
    else:
        keep = f"to keep {old}, relaunch with --opt data.micro_num={old // world}"
        if (old // world) % cfg.data.gradient_accumulation:
            keep += " and a data.gradient_accumulation (and loss.grad_accum) that divides it"
    hint = (f"saved with data.micro_num={saved_micro} on {saved_world} rank{'s' if saved_world > 1 else ''}, now "
            f"{cfg.data.micro_num} x {world}; {keep}")
    return Change(GLOBAL_BATCH, old, new, experiment=True, hint=hint)


def _read(path: str, read) -> Any:
    try:
        return read(path)
    except Exception as exc:  # noqa: BLE001 (json, torch.load and unpickling raise many kinds; all mean the same)
        raise CorruptCheckpointError(f"{path} cannot be read ({type(exc).__name__}: {exc})") from exc


def _json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def changes_since(folder: str, cfg: TrainConfig, world: int) -> list[Change]:
    """Every change from the checkpoint in ``folder`` (its config.json and meta.json) to ``cfg`` on ``world`` ranks.
    A file that cannot be read raises CorruptCheckpointError naming it."""
    saved = _read(os.path.join(folder, CONFIG_FILE), _json)
    meta = _read(os.path.join(folder, META_FILE), _json)
    changes = compare(saved, cfg)
    saved_micro = meta.get("micro_num", saved.get("data", {}).get("micro_num", cfg.data.micro_num))
    batch = global_batch_change(saved_micro, meta.get("world_size", world), cfg, world)
    return changes + ([batch] if batch else [])


def report(folder: str, changes: list[Change], allowed: bool) -> str:
    """The message listing the changes; with a change of experiment and not ``allowed``, what to do."""
    lines = [f"the config differs from the one checkpoint {folder} was trained with ({len(changes)} key"
             f"{'s' if len(changes) > 1 else ''}; * another experiment):"]
    lines += [f"  {'*' if c.experiment else ' '} {c}" for c in changes]
    if any(c.experiment for c in changes):
        if allowed:
            lines.append("  ckpt.allow_config_change=True: continuing with the new values; the changes are recorded "
                         "in the checkpoints' meta.json (config_changes)")
        else:
            lines.append("  resume with the checkpoint's values, or set ckpt.allow_config_change=True to continue "
                         "with the new ones (recorded in the checkpoints' meta.json), or start a new run in another "
                         "ckpt.save_ckpt_folder")
    return "\n".join(lines)


def shape_mismatches(model_state: dict, folder: str, limit: int = 3) -> list[str]:
    """Parameters whose shape in the checkpoint's student weights differs from ``model_state``'s (names missing on
    either side included), at most ``limit``: a model of another shape cannot take these weights."""
    import torch

    saved = _read(os.path.join(folder, STUDENT_FILE),
                  lambda p: torch.load(p, map_location="cpu", weights_only=True, mmap=True))
    take_legacy_change_scale(saved, {}, {})  # older checkpoints' scale buffer is no parameter of the model
    out = []
    for name in sorted(set(saved) | set(model_state)):
        a = tuple(saved[name].shape) if name in saved else None
        b = tuple(model_state[name].shape) if name in model_state else None
        if a != b:
            out.append(f"{name} {a if a is not None else '(absent)'} -> {b if b is not None else '(absent)'}")
    return out[:limit] + ([f"... {len(out) - limit} more"] if len(out) > limit else [])
