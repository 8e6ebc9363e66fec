"""Motion metrics on hand-computed arrays, the baselines, the rollout's feedback, and the script end to end."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from internlm.eval.motion import MotionErrorSums, block_from_poses, constant_velocity, poses_from_blocks, zero_velocity
from internlm.eval.rollout import autoregressive_rollout

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def hand_made_case():
    """2 joints, truth all zeros, joint 1 invisible at frame 10. Prediction (frames 5..19): joint 0 is
    (i - 4) cm off in x at frame i; joint 1 is 2 cm off, and 1 m off at frame 10 (invisible: must not count)."""
    target = torch.zeros(1, 20, 2, 3)
    visible = torch.ones(1, 20, 2, dtype=torch.bool)
    visible[0, 10, 1] = False
    pred = torch.zeros(1, 15, 2, 3)
    pred[0, :, 0, 0] = 0.01 * torch.arange(1, 16)
    pred[0, :, 1, 0] = 0.02
    pred[0, 10 - 5, 1, 0] = 1.0
    return pred, target, visible


def test_mpjpe_mpjve_by_hand():
    s = MotionErrorSums()
    s.add(*hand_made_case())
    r = s.summary()
    # positions: joint 0 -> 1 + 2 + ... + 15 = 120 cm over 15 frames; joint 1 -> 2 cm x 14 visible frames
    assert r["mpjpe_30fps"] == pytest.approx((120 + 28) / 29)
    # 10 fps frames 7, 10, 13, 16, 19: joint 0 -> 3 + 6 + 9 + 12 + 15; joint 1 -> 2 cm at 4 frames (not 10)
    assert r["mpjpe_10fps"] == pytest.approx((45 + 8) / 9)
    # velocities at 30 fps, p_4 = truth = 0: joint 0 moves 1 cm/frame = 30 cm/s at every frame 5..19; joint 1
    # jumps 2 cm at frame 5 (60 cm/s) then stays (0); frames 10 and 11 touch the invisible frame 10: excluded
    assert r["mpjve_30fps"] == pytest.approx((15 * 30 + 60) / 28)
    # velocities at 10 fps over 3 frames: joint 0 -> 3 cm / 0.1 s = 30 cm/s at 7, 10, 13, 16, 19; joint 1 ->
    # 2 cm / 0.1 s = 20 cm/s at frame 7 (from the true p_4), 0 at 16 and 19, frames 10 and 13 excluded
    assert r["mpjve_10fps"] == pytest.approx((5 * 30 + 20) / 8)
    h = r["per_horizon"]
    assert h["frame"] == list(range(5, 20)) and h["ms_after_last_input"][0] == pytest.approx(33.3)
    assert h["mpjpe"][0] == pytest.approx(1.5) and h["mpjpe"][5] == pytest.approx(6.0)  # frame 10: joint 0 only
    assert h["mpjve"][0] == pytest.approx(45.0) and h["mpjve"][5] == pytest.approx(30.0)
    assert r["counts"] == {"joint_positions": 29, "joint_velocities_30fps": 28, "joint_velocities_10fps": 8}


def test_sums_round_trip_and_add_up():
    pred, target, visible = hand_made_case()
    once, twice = MotionErrorSums(), MotionErrorSums()
    once.add(pred, target, visible)
    twice.add(pred, target, visible)
    twice.add(pred, target, visible)
    doubled = MotionErrorSums.from_tensor(once.as_tensor() * 2)
    assert torch.equal(doubled.as_tensor(), twice.as_tensor())
    assert doubled.summary() == once.summary() | {"counts": twice.summary()["counts"]}


def test_blocks_follow_the_dataset_layout():
    xyz = torch.randn(20, 17, 3)
    vis = torch.rand(20, 17) > 0.3
    # EgoExoClips.clip_poses: (20, 17, 3) -> (T, 4, 5, 17) step blocks
    blocks = torch.cat([xyz.reshape(4, 5, 17, 3).permute(0, 3, 1, 2), vis.float().reshape(4, 1, 5, 17)], dim=1)
    got_xyz, got_vis = poses_from_blocks(blocks)
    assert torch.equal(got_xyz, xyz) and torch.equal(got_vis, vis)
    assert torch.equal(block_from_poses(xyz[5:10], vis[5:10]), blocks[1])


def linear_motion(invisible=()):
    """p_i = p_0 + i v per joint (20 frames, 3 joints); (frame, joint) pairs in ``invisible`` are hidden."""
    g = torch.Generator().manual_seed(0)
    p0 = torch.randn(1, 1, 3, 3, generator=g, dtype=torch.float64)
    v = 0.05 * torch.randn(1, 1, 3, 3, generator=g, dtype=torch.float64)  # metres per frame
    xyz = p0 + torch.arange(20, dtype=torch.float64).view(1, 20, 1, 1) * v
    visible = torch.ones(1, 20, 3, dtype=torch.bool)
    for f, j in invisible:
        visible[0, f, j] = False
        xyz[0, f, j] = -1.0  # what the data holds for a missing joint
    return xyz, visible


@pytest.mark.parametrize("invisible", [(), ((4, 1),), ((4, 2), (2, 2), (0, 2))])
def test_constant_velocity_is_exact_on_linear_motion(invisible):
    xyz, visible = linear_motion(invisible)
    pred = constant_velocity(xyz[:, :5], visible[:, :5])
    s = MotionErrorSums()
    s.add(pred, xyz, visible)
    r = s.summary()
    assert r["mpjpe_30fps"] == pytest.approx(0, abs=1e-6) and r["mpjve_30fps"] == pytest.approx(0, abs=1e-5)
    assert r["mpjpe_10fps"] == pytest.approx(0, abs=1e-6) and r["mpjve_10fps"] == pytest.approx(0, abs=1e-5)
    zero = MotionErrorSums()
    zero.add(zero_velocity(xyz[:, :5], visible[:, :5]), xyz, visible)
    assert zero.summary()["mpjpe_30fps"] > 1.0  # the scene does move


def test_zero_velocity_uses_the_last_visible_observation():
    xyz, visible = linear_motion(((4, 1), (3, 1), (0, 2), (1, 2), (2, 2), (3, 2), (4, 2)))
    pred = zero_velocity(xyz[:, :5], visible[:, :5], horizon=15)
    assert torch.equal(pred[0, :, 0], xyz[0, 4, 0].expand(15, 3))  # visible at frame 4
    assert torch.equal(pred[0, :, 1], xyz[0, 2, 1].expand(15, 3))  # last seen at frame 2
    centre = (xyz[0, 4, 0] + xyz[0, 2, 1]) / 2  # joint 2 never seen: the mean of the seen joints
    assert torch.allclose(pred[0, :, 2], centre.expand(15, 3))
    assert torch.isfinite(constant_velocity(xyz[:, :5], visible[:, :5])).all()


def tiny_joint_model():
    from internlm.config.schema import ConvStemConfig, LVMConfig, ModelConfig
    from internlm.model import EgoAgent

    cfg = ModelConfig(hidden_size=32, num_layers=2, num_attention_heads=2, output_dim=16, head_hidden_dim=32,
                      head_bottleneck_dim=8, lvm_config=LVMConfig(conv_stem_config=ConvStemConfig(16, 8)))
    torch.manual_seed(0)
    return EgoAgent(cfg, joint=True).eval()


def test_rollout_feeds_back_each_predicted_step():
    model = tiny_joint_model()
    g = torch.Generator().manual_seed(1)
    frames, poses = torch.randn(2, 4, 3, 16, 16, generator=g), torch.randn(2, 4, 4, 5, 17, generator=g)
    got = autoregressive_rollout(model, frames, poses[:, 0])  # (2, 15, 17, 3)
    tokens = torch.full_like(poses, 123.0)  # future slots hold anything: the action query cannot see them
    tokens[:, 0] = poses[:, 0]
    want = []
    with torch.no_grad():
        for t in (1, 2, 3):
            step = model.forward_joint(frames, tokens, with_logits=False).actions[:, t]  # (2, 4, 5, 17)
            want.append(step[:, :3].permute(0, 2, 3, 1))  # (2, 5, 17, 3)
            tokens[:, t] = torch.cat([step[:, :3], torch.ones_like(step[:, :1])], dim=1)  # visibility 1
    assert got.shape == (2, 15, 17, 3)
    assert torch.allclose(got, torch.cat(want, dim=1), atol=1e-6)
    # the true future poses are never used: changing them changes nothing
    other = poses.clone()
    other[:, 1:] = 0
    assert torch.equal(autoregressive_rollout(model, frames, other[:, 0]), got)


# ------------------------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_motion_script_end_to_end(tmp_path, processed_world):
    from eval_helpers import assert_same_numbers, make_checkpoint, run_script, torchrun, world_paths, write_tiny_config

    from internlm.config import load_config
    from internlm.data.build import build_eval_clip_dataset

    paths = world_paths(processed_world)
    cfg = write_tiny_config(tmp_path / "cfg.py", 2, tmp_path / "run", paths["frames"], paths["poses"])
    make_checkpoint(cfg)
    num_clips = len(build_eval_clip_dataset(load_config(cfg).data))
    proc = run_script(["eval_3dposes.py", "--config", cfg, "--output_dir", str(tmp_path / "out"),
                       "--batch_size", "4", "--which", "teacher"])
    res = json.loads((tmp_path / "out" / "motion.json").read_text())
    assert res["num_clips"] == num_clips == res["num_clips_in_split"] and res["which"] == "teacher"
    for name in ("model", "zero_velocity", "constant_velocity"):
        r = res[name]
        assert len(r["per_horizon"]["mpjpe"]) == 15
        assert 0 < r["mpjpe_30fps"] < 1000 and 0 < r["mpjve_30fps"] < 1e5, (name, r)
        assert r["counts"]["joint_positions"] > 0
    assert res["zero_velocity"]["per_horizon"]["mpjpe"][0] < res["zero_velocity"]["per_horizon"]["mpjpe"][-1]
    assert (tmp_path / "out" / "rollouts.png").stat().st_size > 1000
    assert "MPJPE@30fps" in proc.stdout

    # two ranks shard the clips and add up their sums: the same numbers
    torchrun(["eval_3dposes.py", "--config", cfg, "--output_dir", str(tmp_path / "out2"), "--batch_size", "4",
              "--which", "teacher"])
    res2 = json.loads((tmp_path / "out2" / "motion.json").read_text())
    assert res2["world_size"] == 2 and res2["num_clips"] == num_clips
    for name in ("model", "zero_velocity", "constant_velocity"):
        assert_same_numbers(res2[name], res[name], name)


# ------------------------------------------------------------------------------------- learned pose-only baseline


def test_pose_mlp_starts_as_zero_velocity_and_learns_a_linear_law():
    from internlm.eval.motion import MotionErrorSums, constant_velocity, zero_velocity
    from internlm.model.pose_mlp import PoseMLP, dct_matrix
    from internlm.train.motion_baseline import train_pose_mlp

    d = dct_matrix(20)
    assert torch.allclose(d @ d.T, torch.eye(20), atol=1e-5)  # orthonormal: the inverse is the transpose
    g = torch.Generator().manual_seed(0)
    N, J = 512, 17
    # a known law: every joint moves on a straight line at its own constant velocity, with some label noise
    start, velocity = torch.randn(N, 1, J, 3, generator=g), 0.02 * torch.randn(N, 1, J, 3, generator=g)
    xyz = start + velocity * torch.arange(20.0).view(1, 20, 1, 1) + 0.002 * torch.randn(N, 20, J, 3, generator=g)
    visible = torch.rand(N, 20, J, generator=g) > 0.1
    with torch.no_grad():  # untrained (last layer at 0): exactly the zero-velocity baseline
        assert torch.allclose(PoseMLP()(xyz[:, :5], visible[:, :5]), zero_velocity(xyz[:, :5], visible[:, :5]),
                              atol=1e-6)
    model, losses = train_pose_mlp(xyz[:384], visible[:384], steps=400, progress=False)
    assert np.mean(losses[-20:]) < 0.5 * losses[0]
    test = slice(384, None)
    errors = {}
    with torch.no_grad():
        for name, pred in (("mlp", model(xyz[test, :5], visible[test, :5])),
                           ("zero", zero_velocity(xyz[test, :5], visible[test, :5])),
                           ("const", constant_velocity(xyz[test, :5], visible[test, :5]))):
            s = MotionErrorSums()
            s.add(pred, xyz[test], visible[test])
            errors[name] = s.summary()["mpjpe_30fps"]
    assert errors["mlp"] < 0.35 * errors["zero"], errors  # it learned the law, on clips it never saw


@pytest.mark.slow
def test_motion_baseline_tool_and_its_eval_row(tmp_path, processed_world):
    from eval_helpers import make_checkpoint, run_script, world_paths, write_tiny_config

    paths = world_paths(processed_world)
    cfg = write_tiny_config(tmp_path / "cfg.py", 2, tmp_path / "run", paths["frames"], paths["poses"])
    make_checkpoint(cfg)
    baseline = tmp_path / "pose_mlp.pt"
    run_script(["tools/train_motion_baseline.py", "--config", cfg, "--steps", "300", "--out", str(baseline)])
    payload = torch.load(baseline, weights_only=False)
    assert payload["record"]["pose_frame"] == "camera" and payload["record"]["num_clips"] > 0
    assert payload["record"]["final_loss"] < payload["record"]["first_loss"]
    run_script(["eval_3dposes.py", "--config", cfg, "--output_dir", str(tmp_path / "out"), "--batch_size", "8",
                "--motion_baseline", str(baseline)])
    res = json.loads((tmp_path / "out" / "motion.json").read_text())
    assert set(res) >= {"model", "zero_velocity", "constant_velocity", "pose_mlp"}
    assert 0 < res["pose_mlp"]["mpjpe_30fps"] < 1000
    # a baseline trained on poses in another coordinate frame is refused, naming both
    proc = subprocess.run([sys.executable, "eval_3dposes.py", "--config", cfg, "--motion_baseline", str(baseline),
                           "--opt", "data.pose_frame=world", "--output_dir", str(tmp_path / "bad")], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "'camera' frame" in proc.stderr and "'world'" in proc.stderr
