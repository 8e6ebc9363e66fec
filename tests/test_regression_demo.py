"""Regression guard: the demo stage-2 config, a few fp32 steps from a fixed seed, against stored losses.

The reference (tests/reference/demo_stage2_losses.json) is regenerated only on purpose, with the reason in the
commit message:  EGOAGENT_WRITE_REFERENCE=1 python -m pytest tests/test_regression_demo.py
Tolerance: relative 1e-4 per loss term. The run is deterministic on one machine (bitwise); the margin absorbs
the float reassociation of other CPUs' kernels (different SIMD widths), far below what any change to the model,
the losses, the data pipeline or the optimizer moves (those change the losses at the 1e-2 level or more).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from train_helpers import DEMO, make_trainer

from internlm.config import load_config

REFERENCE = Path(__file__).parent / "reference" / "demo_stage2_losses.json"
TERMS = ("loss", "loss_rep", "loss_pred", "loss_act")
STEPS = 3
RTOL = 1e-4


def demo_stage2_trainer(world, save_folder, steps: int, micro_num: int = 4, **extra):
    """The demo stage-2 config as shipped (model, crops, losses, optimizer) on the test world."""
    overrides = {
        "data.egoexo_frames_folder": str(world.frames_root), "data.egoexo_pose_folder": str(world.pose_root),
        "data.micro_num": micro_num, "data.num_workers": 0, "data.total_steps": steps,
        "lr_scheduler.total_steps": steps, "ckpt.save_ckpt_folder": str(save_folder), "ckpt.load_ckpt_info": None,
        "ckpt.checkpoint_every": 1000, "monitor.tensorboard_folder": None, "monitor.log_every": 1000, **extra,
    }
    cfg = load_config(DEMO[2], list(overrides.items()))
    assert cfg.model.dtype == "torch.float32"
    torch.manual_seed(0)
    return make_trainer(cfg)


def demo_stage2_losses(world, save_folder) -> list[dict]:
    return [{k: float(h[k]) for k in TERMS} for h in demo_stage2_trainer(world, save_folder, STEPS).fit()]


def test_demo_stage2_losses_match_the_reference(processed_world, tmp_path):
    losses = demo_stage2_losses(processed_world, tmp_path / "run")
    assert len(losses) == STEPS
    if os.environ.get("EGOAGENT_WRITE_REFERENCE") == "1":
        REFERENCE.parent.mkdir(exist_ok=True)
        REFERENCE.write_text(json.dumps({"config": DEMO[2], "steps": STEPS, "rtol": RTOL, "losses": losses},
                                        indent=1) + "\n")
        pytest.skip(f"wrote {REFERENCE}")
    reference = json.loads(REFERENCE.read_text())["losses"]
    for step, (got, want) in enumerate(zip(losses, reference), start=1):
        for term in TERMS:
            assert got[term] == pytest.approx(want[term], rel=RTOL), (
                f"step {step} {term}: {got[term]:.6f}, reference {want[term]:.6f} ({REFERENCE.name}); if the change is "
                "intended, regenerate it with EGOAGENT_WRITE_REFERENCE=1 and say why in the commit")


def test_demo_stage2_learns_in_50_steps(processed_world, tmp_path):
    """Each loss drives what it should over a short run of the demo config, by margins a broken loss (wrong sign,
    detached target, no gradient to a part) would not reach: the student comes to match the teacher (the
    teacher-student KL of the DINO loss falls by half), and on the same held-out batch of clips the action loss
    (L1 in metres; the residual head starts at "the body stays where it was last seen") and the prediction loss
    fall by 8% or more (measured: 16% and 10%). The prediction head is the paper's fresh one here: the demo's residual
    head starts at the copy prediction, within a few hundredths of a nat of L_pred's floor, so its L_pred moves with
    the teacher rather than with learning (its start and its learning are tested in test_model / test_training)."""
    fresh = {"model.prediction_residual": False, "teacher.prediction_residual": False,
             "model.prediction_reprojection": False, "teacher.prediction_reprojection": False,
             "data.calibration_takes": 0,  # (held-out takes calibrate the residual change only)
             # the colour change makes the training clips unlike the held-out batch's: it slows L_act's first 50
             # steps (7.7% instead of 16%), which this test of the losses does not measure
             "data.clip_color_change": False}
    trainer = demo_stage2_trainer(processed_world, tmp_path / "run", steps=50, micro_num=8, **fresh)
    cfg = trainer.cfg
    held_out = trainer.loader_factory(cfg, trainer.ctx, consumed=10_000)  # a batch the 50 steps do not draw
    batch = {k: v.to(trainer.device) if torch.is_tensor(v) else v for k, v in next(iter(held_out)).items()}
    temp = trainer.schedules.at(cfg.data.total_steps).teacher_temp
    before = trainer.meta.evaluate([batch], temp)
    history = trainer.fit()
    after = trainer.meta.evaluate([batch], temp)
    first, last = history[:5], history[-5:]

    def mean(rows, key):
        return sum(float(r[key]) for r in rows) / len(rows)

    assert after["val_loss_act"] < 0.92 * before["val_loss_act"], (before, after)
    assert after["val_loss_pred"] < 0.92 * before["val_loss_pred"], (before, after)
    assert mean(last, "kl_teacher_student") < 0.5 * mean(first, "kl_teacher_student")
    assert all(math.isfinite(float(h["loss"])) for h in history)
