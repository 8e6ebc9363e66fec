"""model/reprojection.py: a frame seen through a camera rotation, and the clips' camera motion and focal length that
feed it (data.camera_motion, model.prediction_reprojection)."""

import json
import math
import os

import numpy as np
import pytest
import torch

from internlm.data.build import build_clip_dataset
from internlm.data.egoexo_format import DONE_MARKER, processed_frames_dir
from internlm.model.reprojection import reproject_steps, rotate_view


def _yaw(deg: float) -> torch.Tensor:
    """Camera-t -> camera-(t+1) rotation of a camera turning left by ``deg`` (x right, y down, z ahead): what was
    straight ahead is now to the right."""
    a = math.radians(deg)
    return torch.tensor([[math.cos(a), 0.0, math.sin(a)], [0.0, 1.0, 0.0], [-math.sin(a), 0.0, math.cos(a)]])


def _pitch_up(deg: float) -> torch.Tensor:
    a = math.radians(deg)  # looking up: what was straight ahead is now lower in the image (y down)
    return torch.tensor([[1.0, 0.0, 0.0], [0.0, math.cos(a), math.sin(a)], [0.0, -math.sin(a), math.cos(a)]])


def test_no_rotation_is_the_frame_itself():
    frames = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    out = rotate_view(frames, torch.eye(3).expand(2, 3, 3), torch.tensor([13.8, 30.0]))
    torch.testing.assert_close(out, frames, atol=1e-5, rtol=0)


@pytest.mark.parametrize("deg", [5.0, 15.0])
def test_a_left_turn_moves_what_is_ahead_to_the_right_by_f_tan(deg):
    S, f = 64, 27.5
    frames = torch.zeros(1, 3, S, S)
    c = (S - 1) / 2
    frames[..., :, int(c):int(c) + 2] = 1.0  # a bright vertical bar through the centre (columns 31, 32)
    out = rotate_view(frames, _yaw(deg)[None], torch.tensor([f]))
    profile = out[0, 0, int(c)]  # the middle row
    centre_of_mass = float((profile * torch.arange(S)).sum() / profile.sum())
    assert centre_of_mass == pytest.approx(c + f * math.tan(math.radians(deg)), abs=0.3)
    still = rotate_view(frames, _yaw(deg)[None].transpose(1, 2), torch.tensor([f]))[0, 0, int(c)]
    assert float((still * torch.arange(S)).sum() / still.sum()) < c  # the opposite turn moves it left


def test_looking_up_moves_what_is_ahead_down():
    S, f = 48, 20.0
    frames = torch.zeros(1, 3, S, S)
    frames[..., 23:25, :] = 1.0  # a bright horizontal bar through the centre
    out = rotate_view(frames, _pitch_up(10.0)[None], torch.tensor([f]))[0, 0, :, S // 2]
    row = float((out * torch.arange(S)).sum() / out.sum())
    assert row == pytest.approx((S - 1) / 2 + f * math.tan(math.radians(10.0)), abs=0.3)


def test_reproject_steps_applies_each_steps_own_rotation():
    g = torch.Generator().manual_seed(1)
    frames = torch.rand(2, 3, 3, 16, 16, generator=g)  # (B, T, 3, P, P)
    rotations = torch.stack([torch.stack([_yaw(3.0 * (b + 1) * t) for t in range(3)]) for b in range(2)])
    motion = torch.cat([rotations.flatten(2), torch.zeros(2, 3, 3)], dim=2)  # (B, T, 12)
    focal = torch.tensor([7.0, 9.0])
    out = reproject_steps(frames, motion, focal)
    assert out.shape == frames.shape
    for b in range(2):
        for t in range(3):
            want = rotate_view(frames[b, t][None], rotations[b, t][None], focal[b:b + 1])[0]
            torch.testing.assert_close(out[b, t], want)
    torch.testing.assert_close(out[:, 0], frames[:, 0], atol=1e-5, rtol=0)  # step 0: no rotation


def _clip_cfg(world, camera_motion=True):
    from internlm.config.schema import DataConfig

    return DataConfig(egoexo_frames_folder=str(world.frames_root), egoexo_pose_folder=str(world.pose_root),
                      pred_img_size=32, camera_motion=camera_motion, pose_frame="camera")


def test_the_reprojected_frame_looks_like_the_next_frame_of_a_rendered_take(processed_world, tmp_path):
    """End to end on the rendered world (its extrinsics, its undistortion marker's focal, the loader's frames): frame
    t reprojected by the step's camera rotation is closer to frame t+1 than frame t is, and the opposite rotation
    is farther, on the steps where the camera turns by more than 4 degrees."""
    ds = build_clip_dataset(_clip_cfg(processed_world), "train", train=False, cache_dir=str(tmp_path / "cache"))
    errors = {"copy": [], "reprojected": [], "opposite": []}
    for i in range(0, len(ds), 2):
        sample = ds[i]
        frames, motion, focal = sample["frames"], sample["camera_motion"], sample["focal"]
        assert motion.shape == (4, 12) and focal.shape == ()
        np.testing.assert_allclose(motion[3].numpy(), np.r_[np.eye(3).ravel(), np.zeros(3)])  # the last step
        for t in range(3):
            rot = motion[t, :9].view(3, 3)
            if math.degrees(math.acos(max(-1.0, min(1.0, (float(rot.trace()) - 1) / 2)))) < 4.0:
                continue
            nxt = frames[t + 1]
            errors["copy"].append(float((frames[t] - nxt).abs().mean()))
            for name, r in (("reprojected", rot), ("opposite", rot.T)):
                errors[name].append(float((rotate_view(frames[t][None], r[None], focal[None])[0] - nxt).abs().mean()))
    assert len(errors["copy"]) >= 10
    mean = {k: float(np.mean(v)) for k, v in errors.items()}
    assert mean["reprojected"] < 0.8 * mean["copy"] < 0.8 * mean["opposite"], mean


def test_the_focal_length_comes_from_the_undistortion_marker_and_its_absence_is_named(processed_world, tmp_path):
    cfg = _clip_cfg(processed_world)
    ds = build_clip_dataset(cfg, "train", train=False, cache_dir=str(tmp_path / "cache"))
    take = ds.clip_meta(0)[0]
    marker = os.path.join(processed_frames_dir(str(processed_world.frames_root), take), DONE_MARKER)
    meta = json.load(open(marker))
    assert ds.focal_length(take) == pytest.approx(meta["focal"] * 32 / meta["size"])
    os.replace(marker, marker + ".moved")
    try:
        with pytest.raises(ValueError, match=r"\.done.*focal length"):
            build_clip_dataset(cfg, "train", train=False, cache_dir=str(tmp_path / "cache"))
        assert "camera_motion" not in build_clip_dataset(_clip_cfg(processed_world, False), "train", train=False,
                                                         cache_dir=str(tmp_path / "cache"))[0]
    finally:
        os.replace(marker + ".moved", marker)


def test_reprojection_needs_the_residual_and_the_clips_camera_motion(tmp_path):
    from internlm.config.loader import load_config
    from internlm.config.schema import ConfigError

    demo = "configs/demo/stage2_joint_tiny.py"
    with pytest.raises(ConfigError, match="prediction_reprojection=True.*prediction_residual=True"):
        load_config(demo, [("model.prediction_residual", False), ("teacher.prediction_residual", False)])
    with pytest.raises(ConfigError, match="data.camera_motion=True"):
        load_config(demo, [("data.camera_motion", False)])


@pytest.mark.parametrize("pose_frame", ["clip_first_camera", "world"])
def test_clip_camera_poses_carry_the_stored_camera_frame_poses_into_the_clip_frame(processed_world, tmp_path,
                                                                                   pose_frame):
    """The view oracle's input, checked through the data: the poses as stored (each frame's own camera) moved by
    clip_camera_poses (camera -> the clip's pose frame) are the poses clip_xyz gives in that frame; in the clip's
    first camera frame the first camera is the identity at the origin."""
    import dataclasses

    from internlm.data.egoexo_format import MISSING_JOINT_VALUE

    data = dataclasses.replace(_clip_cfg(processed_world), pose_frame=pose_frame)
    ds = build_clip_dataset(data, "train", train=False, cache_dir=str(tmp_path / "cache"))
    for i in range(0, len(ds), 7):
        cams = ds.clip_camera_poses(i)  # (20, 12)
        rot, centre = cams[:, :9].reshape(20, 3, 3).astype(np.float64), cams[:, 9:].astype(np.float64)
        row = int(ds.index.clip_rows[i])
        raw = np.asarray(ds.index.poses.poses[row:row + 20], np.float64)  # (20, 17, 3) in each frame's camera
        xyz, vis = ds.clip_xyz(i)
        moved = np.einsum("fij,fkj->fki", rot, raw) + centre[:, None]
        seen = vis > 0
        np.testing.assert_allclose(moved[seen], xyz[seen], atol=2e-4)
        assert (xyz[~seen] == MISSING_JOINT_VALUE).all()
        if pose_frame == "clip_first_camera":
            np.testing.assert_allclose(cams[0], np.r_[np.eye(3).ravel(), np.zeros(3)], atol=1e-5)
