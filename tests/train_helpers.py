"""Tiny training configs and a one-process trainer for the tests."""

from __future__ import annotations

import os

import torch

from internlm.config import load_config
from internlm.initialize.launch import init_distributed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = {1: "configs/demo/stage1_dino_tiny.py", 2: "configs/demo/stage2_joint_tiny.py"}


def tiny_overrides(save_folder, steps: int = 6, micro_num: int = 4, accum: int = 2, data_root=None, **extra):
    """A model small enough for tests (hidden 32, 2 layers, 32 px crops, 8 px patches)."""
    o = {
        "model.hidden_size": 32, "teacher.hidden_size": 32, "model.num_layers": 2, "teacher.num_layers": 2,
        "model.num_attention_heads": 2, "teacher.num_attention_heads": 2,
        "model.output_dim": 64, "teacher.output_dim": 64, "loss.out_dim": 64,
        "model.head_hidden_dim": 64, "teacher.head_hidden_dim": 64,
        "model.head_bottleneck_dim": 16, "teacher.head_bottleneck_dim": 16,
        "data.vid_crop_size": 32, "data.local_crop_size": 16, "data.pred_img_size": 32, "data.init_crop_size": 48,
        "data.num_frame_tokens": 16, "data.local_crops_number": 2, "loss.local_crops_number": 2,
        "data.micro_num": micro_num, "data.gradient_accumulation": accum, "loss.grad_accum": accum,
        "data.total_steps": steps, "lr_scheduler.total_steps": steps, "data.num_workers": 0,
        "ckpt.save_ckpt_folder": str(save_folder), "ckpt.checkpoint_every": 1000, "ckpt.load_ckpt_info": None,
        "ckpt.keep_last": 0,
        "monitor.log_every": 1000, "monitor.tensorboard_folder": None,
    }
    if data_root is not None:
        o["data.egoexo_frames_folder"] = str(data_root["frames"])
        o["data.egoexo_pose_folder"] = str(data_root["poses"])
        o["data.train_folder"] = [str(p) for p in data_root["walks"]]
    else:
        o["data.dataset_type"] = "Generated"
        o["data.calibration_takes"] = 0  # generated samples have no takes to hold out
    o.update(extra)
    return list(o.items())


def tiny_config(stage: int, save_folder, **kw):
    return load_config(os.path.join(REPO, DEMO[stage]), tiny_overrides(save_folder, **kw))


def make_trainer(cfg):
    from internlm.train.trainer import Trainer

    return Trainer(cfg, init_distributed(None, device="cpu"))


def flat_state(trainer) -> torch.Tensor:
    """Student, teacher and both centers as one vector (for bitwise comparisons)."""
    meta = trainer.meta
    parts = [p.detach().flatten() for p in meta.student.parameters()]
    parts += [p.detach().flatten() for p in meta.teacher.parameters()]
    parts += [meta.rep_center.flatten(), meta.pred_center.flatten()]
    return torch.cat(parts)


def saved_optimizer_chunks(step_folder) -> dict[str, list[tuple[tuple, tuple]]]:
    """The optimizer tensors of a checkpoint as torch.distributed.checkpoint stored them:
    {"optim.{param}.{exp_avg|exp_avg_sq}": [(offsets, sizes) of each stored chunk]} (sharded state: several chunks;
    replicated state: one)."""
    import torch.distributed.checkpoint as dcp

    metadata = dcp.FileSystemReader(os.path.join(str(step_folder), "train_state")).read_metadata()
    return {fqn: [(tuple(c.offsets), tuple(c.sizes)) for c in meta.chunks]
            for fqn, meta in metadata.state_dict_metadata.items()
            if fqn.startswith("optim.") and fqn.endswith(("exp_avg", "exp_avg_sq"))}
