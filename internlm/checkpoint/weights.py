"""The unsharded weight files of a checkpoint: write them (with the resolved config), load them into a ready
EgoAgent (what every eval tool does first), and read what a new run starts from (read_init_source)."""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from typing import Optional

import torch

from internlm.config import TrainConfig, config_from_resolved, to_dict
from internlm.model import EgoAgent

from .atomic import atomic_torch_save, atomic_write_json, mark_complete
from .layout import (
    CHANGE_SCALE_KEY,
    CONFIG_FILE,
    META_FILE,
    STUDENT_FILE,
    TEACHER_FILE,
    TRAIN_STATE_DIR,
    read_meta,
    resolve_checkpoint,
    step_folder,
)
from .provenance import git_commit

WEIGHT_FILES = {"model": STUDENT_FILE, "student": STUDENT_FILE, "teacher": TEACHER_FILE}


def read_checkpoint_config(folder: str) -> TrainConfig:
    with open(os.path.join(folder, CONFIG_FILE)) as f:
        return config_from_resolved(json.load(f))


def load_state_dict(path: str, which: str = "teacher") -> tuple[dict[str, torch.Tensor], TrainConfig, str]:
    """-> (state dict, config, step folder) of the student ("model") or teacher weights of a checkpoint or run."""
    if which not in WEIGHT_FILES:
        raise ValueError(f"which={which!r}: expected one of {', '.join(WEIGHT_FILES)}")
    folder = resolve_checkpoint(path)
    file = os.path.join(folder, WEIGHT_FILES[which])
    if not os.path.isfile(file):
        raise FileNotFoundError(f"{file} is missing from the checkpoint {folder}")
    state = torch.load(file, map_location="cpu", weights_only=True)
    state.pop(CHANGE_SCALE_KEY, None)  # older checkpoints: the scale is read by read_change_scale
    return state, read_checkpoint_config(folder), folder


def take_legacy_change_scale(student_state: dict, teacher_state: dict, meta: dict) -> None:
    """Older checkpoints hold the residual prediction's change scale as a buffer in both weight files: take it out
    of them (in place) and into ``meta`` under CHANGE_SCALE_KEY, where newer checkpoints keep it."""
    legacy = student_state.pop(CHANGE_SCALE_KEY, None)
    teacher_state.pop(CHANGE_SCALE_KEY, None)
    if legacy is not None and CHANGE_SCALE_KEY not in meta:
        meta[CHANGE_SCALE_KEY] = float(legacy)


def read_change_scale(folder: str) -> float:
    """The share of the learned change the residual state prediction of checkpoint ``folder`` adds to its base
    (train/prediction_base.py): from its meta.json, or from the weights of an older checkpoint; 1 (the change as
    trained) when it has none."""
    meta = read_meta(folder) if os.path.isfile(os.path.join(folder, META_FILE)) else {}
    if CHANGE_SCALE_KEY not in meta:
        student = torch.load(os.path.join(folder, STUDENT_FILE), map_location="cpu", weights_only=True, mmap=True)
        take_legacy_change_scale(student, {}, meta)
    return float(meta.get(CHANGE_SCALE_KEY, 1.0))


def load_model(path: str, which: str = "teacher", device: Optional[torch.device] = None,
               attn_backend: Optional[str] = None) -> tuple[EgoAgent, TrainConfig, str]:
    """An eval-mode EgoAgent with the checkpoint's student or teacher weights, its config and the step folder."""
    state, cfg, folder = load_state_dict(path, which)
    model_cfg = cfg.model
    if attn_backend is not None:
        model_cfg.attn_backend = attn_backend
    model = EgoAgent(model_cfg, joint=cfg.loss.is_joint)
    model.load_state_dict(state, strict=True)
    model.eval()
    if device is not None:
        model.to(device)
    return model, cfg, folder


def read_centers(folder: str, num_prototypes: int) -> Optional[dict[str, torch.Tensor]]:
    """The DINO centres of a checkpoint step folder: {"rep_center": (K,), "pred_center": (K,)} from its
    torch.distributed.checkpoint state; None for a weights-only checkpoint (an untrained export has no centres)."""
    import torch.distributed.checkpoint as dcp

    state_dir = os.path.join(folder, TRAIN_STATE_DIR)
    if not os.path.isdir(state_dir):
        return None
    centers = {"rep_center": torch.zeros(num_prototypes), "pred_center": torch.zeros(num_prototypes)}
    with warnings.catch_warnings():  # DCP warns that a single process is assumed: that is intended here
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(centers, checkpoint_id=state_dir)
    return centers


@dataclass
class InitSource:
    """What a new run takes from another run's checkpoint (ckpt.load_ckpt_info with content ("model",)):
    EgoAgentMetaArch.init_from's arguments."""

    folder: str  # the step folder read
    student_state: dict[str, torch.Tensor]
    teacher_state: dict[str, torch.Tensor]
    centers: Optional[dict[str, torch.Tensor]]  # {"rep_center": (K,), "pred_center": (K,)}; None: weights only


def read_init_source(path: str) -> InitSource:
    """Student and teacher weights and the DINO centres of a checkpoint step folder, or of a run folder's newest
    complete step."""
    student_state, cfg, folder = load_state_dict(path, "model")
    teacher_state, _, _ = load_state_dict(folder, "teacher")
    return InitSource(folder, student_state, teacher_state, read_centers(folder, cfg.model.output_dim))


def write_weights(folder: str, student_state: dict, teacher_state: dict, cfg: TrainConfig, meta: dict) -> None:
    """The unsharded part of a checkpoint: both weight files, the resolved config and meta.json (no marker)."""
    os.makedirs(folder, exist_ok=True)
    atomic_torch_save({k: v.detach().cpu() for k, v in student_state.items()}, os.path.join(folder, STUDENT_FILE))
    atomic_torch_save({k: v.detach().cpu() for k, v in teacher_state.items()}, os.path.join(folder, TEACHER_FILE))
    atomic_write_json(os.path.join(folder, CONFIG_FILE), to_dict(cfg))
    atomic_write_json(os.path.join(folder, META_FILE), meta)


def save_weights_only(save_folder: str, student: torch.nn.Module, teacher: torch.nn.Module, cfg: TrainConfig,
                      step: int) -> str:
    """A complete checkpoint holding only the weights (no training state): for tools, tests and exports."""
    folder = step_folder(save_folder, step)
    meta = {"step": step, "consumed_samples": 0, "world_size": 1, "git_commit": git_commit(), "stage": cfg.stage,
            "weights_only": True}
    write_weights(folder, student.state_dict(), teacher.state_dict(), cfg, meta)
    mark_complete(folder)
    return folder
