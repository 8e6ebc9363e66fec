"""Motion metrics on hand-computed arrays, the baselines, the rollout's feedback, and the script end to end."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from train_helpers import tiny_config

from internlm.config.schema import ConfigError
from internlm.eval.motion import MotionErrorSums, constant_velocity, poses_from_blocks, zero_velocity
from internlm.eval.rollout import autoregressive_rollout
from internlm.model.pose_ops import block_from_poses

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
    s = MotionErrorSums()  # @10fps from the first predicted frame: 5, 8, 11, 14, 17
    s.add(*hand_made_case())
    r = s.summary()
    # positions: joint 0 -> 1 + 2 + ... + 15 = 120 cm over 15 frames; joint 1 -> 2 cm x 14 visible frames
    assert r["mpjpe_30fps"] == pytest.approx((120 + 28) / 29)
    # 10 fps frames 5, 8, 11, 14, 17: joint 0 -> 1 + 4 + 7 + 10 + 13; joint 1 -> 2 cm at all 5 (frame 10 is not one)
    assert r["frames_10fps"] == [5, 8, 11, 14, 17]
    assert r["mpjpe_10fps"] == pytest.approx((35 + 10) / 10)
    assert r["mpjpe_10fps"] < r["mpjpe_30fps"]  # errors grow with the horizon: below @30fps, as in the paper's Table 3
    # velocities at 30 fps, p_4 = truth = 0: joint 0 moves 1 cm/frame = 30 cm/s at every frame 5..19; joint 1
    # jumps 2 cm at frame 5 (60 cm/s) then stays (0); frames 10 and 11 touch the invisible frame 10: excluded
    assert r["mpjve_30fps"] == pytest.approx((15 * 30 + 60) / 28)
    # velocities at 10 fps over 3 frames: joint 0 -> 1 cm / 0.1 s = 10 cm/s at frame 5 (from the true p_2), then
    # 3 cm / 0.1 s = 30 at 8, 11, 14, 17; joint 1 -> 2 cm / 0.1 s = 20 at frame 5, then 0 (8, 11, 14, 17)
    assert r["mpjve_10fps"] == pytest.approx((10 + 4 * 30 + 20) / 10)
    h = r["per_horizon"]
    assert h["frame"] == list(range(5, 20)) and h["ms_after_last_input"][0] == pytest.approx(33.3)
    assert h["mpjpe"][0] == pytest.approx(1.5) and h["mpjpe"][5] == pytest.approx(6.0)  # frame 10: joint 0 only
    assert h["mpjve"][0] == pytest.approx(45.0) and h["mpjve"][5] == pytest.approx(30.0)
    assert r["counts"] == {"joint_positions": 29, "joint_velocities_30fps": 28, "joint_velocities_10fps": 10}

    last = MotionErrorSums("to_last")  # the definition before: frames 7, 10, 13, 16, 19
    last.add(*hand_made_case())
    r = last.summary()
    # joint 0 -> 3 + 6 + 9 + 12 + 15; joint 1 -> 2 cm at 4 frames (not 10): above @30fps
    assert r["frames_10fps"] == [7, 10, 13, 16, 19] and r["mpjpe_10fps"] == pytest.approx((45 + 8) / 9)
    # joint 0 -> 30 cm/s at each; joint 1 -> 20 cm/s at frame 7 (from the true p_4), 0 at 16 and 19, 10/13 excluded
    assert r["mpjve_10fps"] == pytest.approx((5 * 30 + 20) / 8)
    assert r["counts"]["joint_velocities_10fps"] == 8
    with pytest.raises(ValueError, match="frames_10fps='every_third'"):
        MotionErrorSums("every_third")


def test_sums_round_trip_and_add_up():
    pred, target, visible = hand_made_case()
    once, twice = MotionErrorSums(), MotionErrorSums()
    once.add(pred, target, visible)
    twice.add(pred, target, visible)
    twice.add(pred, target, visible)
    doubled = MotionErrorSums.from_tensor(once.as_tensor() * 2)
    assert torch.equal(doubled.as_tensor(), twice.as_tensor())
    assert doubled.summary() == once.summary() | {"counts": twice.summary()["counts"]}
    last = MotionErrorSums("to_last")
    last.add(pred, target, visible)
    assert MotionErrorSums.from_tensor(last.as_tensor(), "to_last").summary() == last.summary()


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


@pytest.mark.parametrize("passes", [1, 2])
def test_training_rollout_passes_are_the_evaluation_rollout(passes):
    """loss.act_rollout_passes: k passes fed from the teacher-forced predictions give the evaluation's rollout for
    steps <= k + 1 (2 passes of a 4-step clip: every step); with 1 pass step 3 still sees a teacher-forced
    prediction. The fed-back poses are detached: L_act trains each pass, not through the rollout's inputs."""
    model = tiny_joint_model()
    with torch.no_grad():  # weights large enough that every output depends visibly on every input it sees
        for p in model.parameters():
            p.normal_(0, 0.3, generator=torch.Generator().manual_seed(p.numel()))
    g = torch.Generator().manual_seed(2)
    frames, poses = torch.randn(2, 4, 3, 16, 16, generator=g), torch.randn(2, 4, 4, 5, 17, generator=g)
    want = autoregressive_rollout(model, frames, poses[:, 0]).view(2, 3, 5, 17, 3)
    out = model(frames=frames, poses=poses, rollout_passes=passes)
    assert len(out.rollout_actions) == passes
    got = out.rollout_actions[-1][:, 1:, :3].permute(0, 1, 3, 4, 2)  # (2, 3 steps, 5, 17, 3)
    exact = passes + 1
    assert torch.allclose(got[:, :exact], want[:, :exact], atol=1e-5)
    if exact < 3:
        assert (got[:, exact:] - want[:, exact:]).abs().max() > 1e-3
    teacher_forced = out.joint.actions[:, 2:, :3].permute(0, 1, 3, 4, 2)
    assert (teacher_forced - want[:, 1:]).abs().max() > 1e-3  # the true step-1 poses are not the predicted ones
    out.rollout_actions[-1].sum().backward()
    assert model.action_head.proj.weight.grad.abs().sum() > 0


def test_rollout_passes_beyond_what_changes_anything_are_refused(tmp_path):
    for passes, ok in ((0, True), (2, True), (3, False), (-1, False)):
        try:
            tiny_config(2, tmp_path, **{"loss.act_rollout_passes": passes})
        except ConfigError as exc:
            assert not ok and "loss.act_rollout_passes" in str(exc) and "data.clip_steps - 2 = 2" in str(exc)
        else:
            assert ok


# ------------------------------------------------------------------------------------------- end to end


OFFSET = (0.12, -0.05, 0.0)  # metres added by the known-function action head to every predicted frame


def known_function_checkpoint(config_path: str, seed: int = 0) -> str:
    """A tiny checkpoint whose action head is a known function of its input: with action_residual its output is the
    residual base (the last observed pose of the previous step) plus OFFSET, whatever the images (the head's weights
    are 0, its bias is OFFSET). Student and teacher alike."""
    from internlm.checkpoint import save_weights_only
    from internlm.config import load_config
    from internlm.model import EgoAgent

    cfg = load_config(config_path)
    assert cfg.model.action_residual
    models = []
    for s in (seed, seed + 1):
        torch.manual_seed(s)
        model = EgoAgent(cfg.model, joint=True)
        with torch.no_grad():
            bias = model.action_head.proj.bias.view(4, 5, 17)
            bias[:3] = torch.tensor(OFFSET).view(3, 1, 1)
        models.append(model)
    return save_weights_only(cfg.ckpt.save_ckpt_folder, *models, cfg, 5)


def hand_rollout_errors(dataset) -> dict:
    """Per clip (in the split's order), MPJPE@30fps in cm computed here with numpy: the known-function model's
    autoregressive rollout (step k = step 0's last observed pose + k OFFSET: each step's base is the previous
    step's last pose) and the zero-velocity baseline (step 0's last observed pose)."""
    model, zero = [], []
    offset = np.array(OFFSET)
    for i in range(len(dataset)):
        xyz, vis = dataset.clip_xyz(i)  # (20, 17, 3), (20, 17)
        xyz, vis = xyz.astype(np.float64), vis > 0.5
        last = np.zeros((17, 3))
        seen = np.zeros(17, bool)
        for f in range(5):  # per joint, its last visible input frame
            last[vis[f]], seen[vis[f]] = xyz[f][vis[f]], True
        last[~seen] = last[seen].mean(0)
        k = (np.arange(5, 20) - 5) // 5 + 1  # step of each target frame
        pred = last[None] + k[:, None, None] * offset
        target, tvis = xyz[5:], vis[5:]
        for out, p in ((model, pred), (zero, np.broadcast_to(last, target.shape))):
            out.append((np.linalg.norm(p - target, axis=-1) * 100)[tvis].mean())
    return {"model": np.array(model), "zero_velocity": np.array(zero)}


@pytest.mark.slow
def test_motion_script_end_to_end(tmp_path, processed_world):
    """On a checkpoint whose action head is a known function, the script's headline numbers equal an independent
    numpy computation: EgoAgent's MPJPE, its paired difference to zero velocity (sign included), image controls that
    cannot matter (exactly 0, "unused"); with siMLPe and the oracles their rows and margins; on 2 ranks the same."""
    from eval_helpers import assert_same_numbers, run_script, torchrun, world_paths, write_tiny_config

    from internlm.config import load_config
    from internlm.data.build import build_eval_clip_dataset

    paths = world_paths(processed_world)
    cfg = write_tiny_config(tmp_path / "cfg.py", 2, tmp_path / "run", paths["frames"], paths["poses"])
    with open(cfg, "a") as f:
        f.write("model = dict(MODEL, action_residual=True)\nteacher = dict(MODEL, teacher=True, action_residual=True)\n"
                "data['pose_frame'] = 'clip_first_camera'\n")
    known_function_checkpoint(cfg)
    dataset = build_eval_clip_dataset(load_config(cfg).data)
    hand = hand_rollout_errors(dataset)
    baselines = {}
    for kind in ("", "view", "scene"):
        out = tmp_path / f"{kind or 'simlpe'}.pt"
        run_script(["tools/train_motion_baseline.py", "--config", cfg, "--steps", "60", "--blocks", "2", "--out",
                    str(out)] + (["--oracle", kind, "--scene_truth", str(processed_world.data_root)] if kind else []))
        baselines[kind] = str(out)
    args = ["eval_3dposes.py", "--config", cfg, "--batch_size", "4", "--which", "teacher",
            "--motion_baseline", baselines[""], "--oracle", baselines["view"], "--oracle", baselines["scene"],
            "--scene_truth", str(processed_world.data_root)]
    proc = run_script(args + ["--output_dir", str(tmp_path / "out")])
    res = json.loads((tmp_path / "out" / "motion.json").read_text())
    assert res["num_clips"] == len(dataset) == res["num_clips_in_split"] and res["which"] == "teacher"
    per_clip = res["per_clip"]
    assert per_clip["sample_id"] == list(range(len(dataset)))
    for name in ("model", "zero_velocity"):
        np.testing.assert_allclose(per_clip["mpjpe_30fps"][name], hand[name], rtol=1e-5, atol=1e-5)
    weights = np.array([dataset.clip_xyz(i)[1][5:].sum() for i in range(len(dataset))])  # visible joints per clip
    assert res["model"]["mpjpe_30fps"] == pytest.approx((hand["model"] * weights).sum() / weights.sum(), rel=1e-6)
    d = hand["model"] - hand["zero_velocity"]
    got = res["comparisons"]["model_minus_zero_velocity"]
    assert got["mpjpe_30fps_diff"] == pytest.approx(d.mean(), rel=1e-5) and d.mean() > 1.0  # the offset costs
    assert got["mpjpe_30fps_diff_se"] == pytest.approx(d.std(ddof=1) / np.sqrt(len(d)), rel=1e-4)
    for control in ("other_images", "mean_image"):  # the head ignores the images: no control can move it
        c = res["image_controls"][control]
        assert c["mpjpe_30fps_diff"] == 0.0 and not c["used"]
    rows = per_clip["mpjpe_30fps"]
    for oracle in ("view_oracle", "scene_oracle"):
        m = np.array(rows["simlpe"]) - np.array(rows[oracle])
        assert res["oracle_margins"][oracle]["mpjpe_30fps_diff"] == pytest.approx(m.mean(), rel=1e-5, abs=1e-6)
    assert res["frames_10fps"] == [5, 8, 11, 14, 17] and len(res["model"]["per_horizon"]["mpjpe"]) == 15
    assert res["zero_velocity"]["per_horizon"]["mpjpe"][0] < res["zero_velocity"]["per_horizon"]["mpjpe"][-1]
    assert (tmp_path / "out" / "rollouts.png").stat().st_size > 1000
    assert "Image controls minus EgoAgent" in proc.stdout and "siMLPe minus each privileged oracle" in proc.stdout

    # two ranks shard the clips and add up their sums: the same numbers, per clip too
    torchrun(args + ["--output_dir", str(tmp_path / "out2")])
    res2 = json.loads((tmp_path / "out2" / "motion.json").read_text())
    assert res2["world_size"] == 2 and res2["num_clips"] == len(dataset)
    for name in ("model", "model_other_images", "simlpe", "view_oracle", "zero_velocity", "constant_velocity",
                 "per_clip", "comparisons", "image_controls", "oracle_margins"):
        assert_same_numbers(res2[name], res[name], name, rel=1e-6)


def test_predictors_never_see_the_future_poses():
    """split_batch hands the predictors the images and the first 5 poses only: the predictions of a batch whose
    future poses are replaced by noise are identical (the rollout, siMLPe and the floors), while the scored targets
    are not."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("eval_3dposes", os.path.join(REPO, "eval_3dposes.py"))
    script = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = script  # dataclasses look their module up
    spec.loader.exec_module(script)
    from internlm.model.simlpe import SiMLPe, SiMLPeConfig

    model = tiny_joint_model()
    g = torch.Generator().manual_seed(3)
    batch = {"frames": torch.randn(2, 4, 3, 16, 16, generator=g), "poses": torch.randn(2, 4, 4, 5, 17, generator=g),
             "sample_id": torch.tensor([0, 1])}
    batch["poses"][:, :, 3] = 1.0
    noisy = dict(batch, poses=batch["poses"].clone())
    noisy["poses"][:, 1:] = torch.randn(2, 3, 4, 5, 17, generator=g)
    simlpe = SiMLPe(SiMLPeConfig(blocks=2))
    with torch.no_grad():
        simlpe.fc_out.weight.normal_(0, 0.1)
    predictors = script.build_predictors(model, None, None, simlpe, {}, None, 5)
    inputs, xyz, _ = script.split_batch(batch)
    noisy_inputs, noisy_xyz, _ = script.split_batch(noisy)
    assert not torch.equal(xyz, noisy_xyz)
    with torch.no_grad():
        for name, predict in predictors.items():
            assert torch.equal(predict(inputs), predict(noisy_inputs)), name


# ------------------------------------------------------------------------------------- learned pose-only baseline


def test_simlpe_starts_as_zero_velocity_and_learns_a_linear_law():
    from internlm.eval.motion import MotionErrorSums, constant_velocity, zero_velocity
    from internlm.model.simlpe import SiMLPe, SiMLPeConfig, dct_matrix
    from internlm.train.motion_baseline import train_simlpe

    d = dct_matrix(5)
    assert torch.allclose(d @ d.T, torch.eye(5), atol=1e-5)  # orthonormal: the inverse is the transpose
    g = torch.Generator().manual_seed(0)
    N, J = 512, 17
    # a known law: every joint moves on a straight line at its own constant velocity, with some label noise
    start, velocity = 0.3 * torch.randn(N, 1, J, 3, generator=g), 0.02 * torch.randn(N, 1, J, 3, generator=g)
    xyz = start + velocity * torch.arange(20.0).view(1, 20, 1, 1) + 0.002 * torch.randn(N, 20, J, 3, generator=g)
    visible = torch.rand(N, 20, J, generator=g) > 0.1
    with torch.no_grad():  # untrained (last layer at ~0, blocks at the identity): the zero-velocity baseline
        for mixing in ("temporal", "alternating"):
            net = SiMLPe(SiMLPeConfig(mixing=mixing))
            assert torch.allclose(net(xyz[:, :5], visible[:, :5], 15), zero_velocity(xyz[:, :5], visible[:, :5]),
                                  atol=1e-5)
    model, losses = train_simlpe(xyz[:384], visible[:384], steps=600, progress=False,
                                 cfg=SiMLPeConfig(blocks=8))
    assert np.mean(losses[-20:]) < 0.5 * losses[0]
    test = slice(384, None)
    errors = {}
    with torch.no_grad():
        for name, pred in (("simlpe", model(xyz[test, :5], visible[test, :5], 15)),
                           ("zero", zero_velocity(xyz[test, :5], visible[test, :5])),
                           ("const", constant_velocity(xyz[test, :5], visible[test, :5]))):
            s = MotionErrorSums()
            s.add(pred, xyz[test], visible[test])
            errors[name] = s.summary()["mpjpe_30fps"]
    assert errors["simlpe"] < 0.35 * errors["zero"], errors  # it learned the law, on clips it never saw


def test_simlpe_oracle_reads_its_condition():
    """An oracle's condition is an input: a law that depends on it (each pass moves the body by the pass's
    condition) is learned with it, and the pose-only model cannot learn it."""
    from internlm.eval.motion import MotionErrorSums
    from internlm.model.simlpe import SiMLPe, SiMLPeConfig
    from internlm.train.motion_baseline import train_simlpe

    g = torch.Generator().manual_seed(1)
    N, J = 512, 17
    shift = 0.1 * torch.randn(N, 3, 3, generator=g)  # per pass: where the body goes (metres over 5 frames)
    xyz = torch.randn(N, 1, J, 3, generator=g).expand(N, 20, J, 3).clone()
    for p in range(3):  # frames 5..19 move linearly by the pass's shift within each block of 5
        ramp = torch.arange(1, 6, dtype=torch.float32).view(1, 5, 1, 1) / 5
        base = xyz[:, 4 + 5 * p:5 + 5 * p]
        xyz[:, 5 + 5 * p:10 + 5 * p] = base + ramp * shift[:, p].view(N, 1, 1, 3)
    visible = torch.ones(N, 20, J, dtype=torch.bool)
    with pytest.raises(ValueError, match="needs its condition"):
        SiMLPe(SiMLPeConfig(condition_dim=3, condition="view"))(xyz[:, :5], visible[:, :5], 15)
    errors = {}
    for name, cfg, cond in (("oracle", SiMLPeConfig(blocks=4, condition_dim=3, condition="view"), shift),
                            ("pose_only", SiMLPeConfig(blocks=4), None)):
        model, _ = train_simlpe(xyz[:384], visible[:384], steps=300, progress=False, cfg=cfg,
                                condition=None if cond is None else cond[:384])
        with torch.no_grad():
            pred = model(xyz[384:, :5], visible[384:, :5], 15, None if cond is None else cond[384:])
        s = MotionErrorSums()
        s.add(pred, xyz[384:], visible[384:])
        errors[name] = s.summary()["mpjpe_30fps"]
    assert errors["oracle"] < 0.3 * errors["pose_only"], errors


@pytest.mark.slow
def test_motion_baseline_tool_and_its_eval_row(tmp_path, processed_world):
    from eval_helpers import make_checkpoint, run_script, world_paths, write_tiny_config

    paths = world_paths(processed_world)
    cfg = write_tiny_config(tmp_path / "cfg.py", 2, tmp_path / "run", paths["frames"], paths["poses"])
    make_checkpoint(cfg)
    baseline, oracle = tmp_path / "simlpe.pt", tmp_path / "scene_oracle.pt"
    run_script(["tools/train_motion_baseline.py", "--config", cfg, "--steps", "300", "--blocks", "4", "--out",
                str(baseline)])
    payload = torch.load(baseline, weights_only=False)
    assert payload["record"]["pose_frame"] == "camera" and payload["record"]["num_clips"] > 0
    assert payload["record"]["final_loss"] < payload["record"]["first_loss"]
    assert payload["config"]["blocks"] == 4 and payload["config"]["condition_dim"] == 0
    run_script(["eval_3dposes.py", "--config", cfg, "--output_dir", str(tmp_path / "out"), "--batch_size", "8",
                "--motion_baseline", str(baseline), "--no_image_controls"])
    res = json.loads((tmp_path / "out" / "motion.json").read_text())
    assert set(res) >= {"model", "zero_velocity", "constant_velocity", "simlpe"} and "model_mean_image" not in res
    assert res["simlpe"]["mpjpe_30fps"] < res["zero_velocity"]["mpjpe_30fps"]  # it learned something

    def fails(args, *needles):
        proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300)
        assert proc.returncode != 0 and all(n in proc.stderr for n in needles), proc.stderr[-2000:]

    # a baseline trained on poses in another coordinate frame is refused, naming both
    fails(["eval_3dposes.py", "--config", cfg, "--motion_baseline", str(baseline), "--opt", "data.pose_frame=world",
           "--output_dir", str(tmp_path / "bad")], "'camera' frame", "'world'")
    # an oracle is not a baseline (and the other way round); the scene oracle needs the world's scene truth
    run_script(["tools/train_motion_baseline.py", "--config", cfg, "--steps", "20", "--blocks", "2", "--oracle",
                "scene", "--scene_truth", str(processed_world.data_root), "--out", str(oracle)])
    fails(["eval_3dposes.py", "--config", cfg, "--motion_baseline", str(oracle)], "an oracle (scene)", "--oracle")
    fails(["eval_3dposes.py", "--config", cfg, "--oracle", str(baseline)], "the pose-only baseline")
    fails(["eval_3dposes.py", "--config", cfg, "--oracle", str(oracle)], "--scene_truth")
    fails(["tools/train_motion_baseline.py", "--config", cfg, "--oracle", "view"], "view oracle", "camera")


@pytest.mark.slow
def test_diagnose_motion_on_a_known_function(tmp_path, processed_world):
    """tools/diagnose_motion.py on the known-function checkpoint: the autoregressive and teacher-forced errors equal a
    numpy computation (each teacher-forced step is the TRUE previous step's last pose + OFFSET, the rollout step 0's
    + k OFFSET), the images cannot matter (every control exactly 0), and the tool writes its JSON."""
    from eval_helpers import run_script, world_paths, write_tiny_config

    from internlm.config import load_config
    from internlm.data.build import build_eval_clip_dataset

    paths = world_paths(processed_world)
    cfg = write_tiny_config(tmp_path / "cfg.py", 2, tmp_path / "run", paths["frames"], paths["poses"])
    with open(cfg, "a") as f:
        f.write("model = dict(MODEL, action_residual=True)\n"
                "teacher = dict(MODEL, teacher=True, action_residual=True)\n")
    known_function_checkpoint(cfg)
    dataset = build_eval_clip_dataset(load_config(cfg).data)
    out = tmp_path / "diagnosis.json"
    run_script(["tools/diagnose_motion.py", "--config", cfg, "--batch_size", "8", "--out", str(out)])
    got = json.loads(out.read_text())
    offset = np.array(OFFSET)
    errors = {"autoregressive": [], "teacher-forced": []}
    for i in range(len(dataset)):
        xyz, vis = dataset.clip_xyz(i)
        xyz, vis = xyz.astype(np.float64), vis > 0.5
        for mode in errors:
            per_step = []
            for k in (1, 2, 3):
                src = 0 if mode == "autoregressive" else k - 1  # the block whose last pose is the base
                last, seen = np.zeros((17, 3)), np.zeros(17, bool)
                for f in range(5 * src, 5 * src + 5):
                    last[vis[f]], seen[vis[f]] = xyz[f][vis[f]], True
                last[~seen] = last[seen].mean(0)
                pred = last + (k if mode == "autoregressive" else 1) * offset
                target, tvis = xyz[5 * k:5 * k + 5], vis[5 * k:5 * k + 5]
                per_step.append((np.linalg.norm(pred - target, axis=-1) * 100)[tvis].mean())
            errors[mode].append(per_step)
    for mode, e in errors.items():
        want = np.nanmean(np.array(e), axis=0)
        for k in (1, 2, 3):
            assert got["mpjpe"][mode][f"step{k}"]["all"] == pytest.approx(want[k - 1], rel=1e-4), (mode, k)
    assert got["mpjpe"]["teacher-forced"]["all"] < got["mpjpe"]["autoregressive"]["all"]  # the offset accumulates
    for name, effect in got["image_effect"].items():
        assert effect["diff"] == 0.0 and not effect["used"], name
    assert set(got["gradient_shares"]) == {"image tokens", "action tokens"}


def test_scene_ceiling_tool_runs(tmp_path):
    """tools/diagnose_scene_ceiling.py end to end on a few short simulated takes: both rows and the paired margin."""
    from eval_helpers import run_script

    out = tmp_path / "ceiling.json"
    run_script(["tools/diagnose_scene_ceiling.py", "--train_takes", "3", "--test_takes", "1", "--frames", "60",
                "--steps", "20", "--blocks", "2", "--out", str(out)])
    got = json.loads(out.read_text())
    assert got["train_clips"] == 3 * 9 and got["test_clips"] == 9
    margin = got["simlpe_minus_scene_oracle"]
    rows = got["simlpe"]["mpjpe_30fps"], got["scene_oracle"]["mpjpe_30fps"]
    assert margin["mpjpe_30fps_diff"] == pytest.approx(rows[0] - rows[1], abs=1e-6)
    assert margin["mpjpe_30fps_diff_se"] > 0
