"""Tiny configs and checkpoints for the eval and export tests (hidden 64, 2 layers, 32 px frames, 8 px patches)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIG_TEMPLATE = """
JOB_NAME = "eval_tiny"
MODEL = dict(hidden_size=64, num_layers=2, num_attention_heads=2, output_dim=128, head_hidden_dim=64,
             head_bottleneck_dim=16, dtype="torch.float32", attn_backend="sdpa",
             lvm_config=dict(enable=False, enable_conv_stem=True, conv_stem_config=dict(img_size=32, patch_size=8)))
model = dict(MODEL)
teacher = dict(MODEL, teacher=True)
data = dict(dataset_type={dataset_type!r}, micro_num=4, total_steps=10, vid_crop_size=32, local_crop_size=16,
            pred_img_size=32, init_crop_size=48, num_frame_tokens=16, local_crops_number=2, num_workers=0,
            egoexo_frames_folder={frames!r}, egoexo_pose_folder={poses!r}, train_folder={walks!r})
loss = dict(name={loss!r}, out_dim=128, local_crops_number=2)
lr_scheduler = dict(total_steps=10)
ckpt = dict(save_ckpt_folder={save!r})
"""


def write_tiny_config(path, stage: int, save_folder, frames: str = "data/none", poses: str = "data/none",
                      walks=()) -> str:
    """A stage-1 or stage-2 config file for the tiny model; data paths point at a (fixture) world."""
    text = CONFIG_TEMPLATE.format(dataset_type="EgoExoClips" if stage == 2 else "WTVideos",
                                  loss="joint" if stage == 2 else "dinoimgcls", frames=str(frames),
                                  poses=str(poses), walks=[str(w) for w in walks], save=str(save_folder))
    with open(path, "w") as f:
        f.write(textwrap.dedent(text))
    return str(path)


def make_checkpoint(config_path: str, step: int = 7, seed: int = 0, vq_weights: bool = False) -> str:
    """save_weights_only of a freshly initialised tiny EgoAgent (student and a differently seeded teacher) into
    the config's ckpt.save_ckpt_folder -> the step folder."""
    from internlm.checkpoint import save_weights_only
    from internlm.config import load_config
    from internlm.model import EgoAgent

    cfg = load_config(config_path)
    torch.manual_seed(seed)
    student = EgoAgent(cfg.model, joint=cfg.loss.is_joint)
    torch.manual_seed(seed + 1)
    teacher = EgoAgent(cfg.model, joint=cfg.loss.is_joint)
    folder = save_weights_only(cfg.ckpt.save_ckpt_folder, student, teacher, cfg, step)
    if vq_weights:  # as an InternLM VQGAN-embedding checkpoint would carry them
        from internlm.checkpoint.layout import TEACHER_FILE

        path = os.path.join(folder, TEACHER_FILE)
        state = torch.load(path, weights_only=True)
        state["embedding.vq_model.quantize.embedding.weight"] = torch.randn(16, 4)
        torch.save(state, path)
    return folder


def run_script(args: list, cwd=None, timeout: float = 300, env_extra=None) -> subprocess.CompletedProcess:
    """Run a repo script in a fresh python; fails the test with its output when it exits non-zero."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", **(env_extra or {}))
    proc = subprocess.run([sys.executable, *args], cwd=cwd or REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{args} exited {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def world_paths(world) -> dict:
    """The folders of the ``processed_world`` fixture (tests/conftest.py) that the eval configs point at."""
    return {"frames": str(world.frames_root), "poses": str(world.pose_root), "imagefolder": str(world.imagefolder),
            "walks": [str(p) for p in world.wtour_videos]}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(script_args: list, nproc: int = 2, **kw) -> subprocess.CompletedProcess:
    """Run a repo script under torchrun (gloo on CPU) with --launcher torch."""
    return run_script(["-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={free_port()}",
                       *script_args, "--launcher", "torch"], **kw)


def assert_same_numbers(got, want, where="", rel=1e-9):
    """Nested dicts/lists of the result JSONs are equal, floats up to ``rel``."""
    import math

    if isinstance(want, dict):
        assert set(got) == set(want), (where, sorted(set(got) ^ set(want)))
        for key in want:
            assert_same_numbers(got[key], want[key], f"{where}.{key}", rel)
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same_numbers(g, w, f"{where}[{i}]", rel)
    elif isinstance(want, float):
        assert math.isclose(got, want, rel_tol=rel, abs_tol=1e-9) or (math.isnan(got) and math.isnan(want)), \
            (where, got, want)
    else:
        assert got == want, (where, got, want)


def converter_module():
    """tools/convert2hf_dino_conv_stem_cls.py as a module (a script, not a package): in-process conversions."""
    import importlib.util

    path = os.path.join(REPO, "tools", "convert2hf_dino_conv_stem_cls.py")
    spec = importlib.util.spec_from_file_location("convert2hf", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
