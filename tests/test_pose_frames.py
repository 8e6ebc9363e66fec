"""data.pose_frame: the clip loader's coordinate frames, checked against transforms computed independently."""

from __future__ import annotations

import json
import math
import os

import cv2
import numpy as np
import pytest

from internlm.config.schema import POSE_FRAMES, DataConfig
from internlm.data import egoexo_format as fmt
from internlm.data.build import build_clip_dataset


def clip_cfg(frames_root, pose_root, pose_frame: str) -> DataConfig:
    return DataConfig(dataset_type="EgoExoClips", egoexo_frames_folder=str(frames_root),
                      egoexo_pose_folder=str(pose_root), pred_img_size=32, num_workers=0, pose_frame=pose_frame)


def test_every_frame_matches_the_raw_camera_poses(processed_world, tmp_path):
    """The loader's world / clip / take frames equal the raw extrinsics applied to the stored camera-frame poses
    (the raw camera_pose JSON, not the fragments' rotation and trajectory)."""
    w = processed_world
    split = "val"
    datasets = {f: build_clip_dataset(clip_cfg(w.frames_root, w.pose_root, f), split, train=False,
                                      cache_dir=str(tmp_path)) for f in POSE_FRAMES}
    ds = datasets["camera"]
    for i in (0, len(ds) // 2, len(ds) - 1):
        take, _ = ds.clip_meta(i)
        row = int(ds.index.clip_rows[i])
        frames = np.asarray(ds.index.poses.frames[row:row + 20])
        raw = json.load(open(fmt.camera_pose_path(str(w.egoexo_root), split, take)))
        ext = raw[fmt.aria_key(raw)]["camera_extrinsics"]
        e = {f: np.asarray(ext[str(f)], np.float64) for f in frames}
        cam, vis = ds.clip_xyz(i)
        world = np.stack([e[f][:, :3].T @ (cam[k].T - e[f][:, 3:]) for k, f in enumerate(frames)]).transpose(0, 2, 1)
        first = np.asarray(ds.index.poses.frames[int(ds.index.poses.take_offsets[ds.index.clip_takes[i]])])
        e_take = np.asarray(ext[str(int(first))], np.float64)
        want = {"world": world,
                "clip_first_camera": world @ e[frames[0]][:, :3].T + e[frames[0]][:, 3],
                "take_first_camera": world @ e_take[:, :3].T + e_take[:, 3]}
        seen = vis > 0
        assert seen.sum() > 100
        for name, expected in want.items():
            got, got_vis = datasets[name].clip_xyz(i)
            np.testing.assert_array_equal(got_vis, vis)
            np.testing.assert_allclose(got[seen], expected[seen], atol=2e-5, err_msg=name)
            assert np.all(got[~seen] == fmt.MISSING_JOINT_VALUE)
        np.testing.assert_allclose(datasets["clip_first_camera"].clip_xyz(i)[0][0][seen[0]], cam[0][seen[0]],
                                   atol=2e-5)  # the clip's first frame is its own camera frame
        block = datasets["clip_first_camera"].clip_poses(i)  # (4, 4, 5, 17): the model's input layout
        np.testing.assert_allclose(block[1, :3, 2].numpy().T[seen[7]], want["clip_first_camera"][7][seen[7]],
                                   atol=2e-5)


def _write_turning_take(root, degrees_per_frame: float, n: int = 25, metres_per_frame: float = 0.0) -> tuple[str, str]:
    """A take whose whole body turns (about the world's vertical axis) with the head camera fixed to it, on the
    spot or walking along world +x: its processed fragment and the step frames. -> (frames_root, pose_root)."""
    take = "00000000-0000-0000-0000-00000000turn"
    body = np.random.default_rng(0).uniform(-0.4, 0.4, (17, 3)) + [1.0, 0.0, 1.0]  # world, in front of the camera
    # camera looking along world +x, z up: camera x right = -y world, camera y down = -z world, camera z = +x world
    base = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])
    start = np.array([0.0, 0.0, 1.6])
    entries = {}
    for f in range(n):
        centre = start + [metres_per_frame * f, 0.0, 0.0]
        a = math.radians(degrees_per_frame * f)
        turn = np.array([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]])
        joints = (body - start) @ turn.T + centre  # the body turns about the camera's vertical axis
        rotation = base @ turn.T  # world -> camera, turning with it
        pose = (joints - centre) @ rotation.T
        entries[str(f)] = {"pose": pose.tolist(), "confidence": [1] * 17, "trajectory": centre.tolist(),
                           "rotation": rotation.tolist()}
    pose_dir = os.path.join(root, "poses", "val")
    os.makedirs(pose_dir)
    with open(os.path.join(pose_dir, fmt.pose_fragment_name(take, 0, n - 1)), "w") as fh:
        json.dump(entries, fh)
    frames_root = os.path.join(root, "processed_data")
    for f in range(0, n, fmt.FRAME_STEP):
        path = fmt.processed_frame_path(frames_root, take, f)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        cv2.imwrite(path, np.full((32, 32, 3), 100, np.uint8))
    return frames_root, os.path.join(root, "poses")


def test_a_turning_body_shows_in_clip_coordinates_not_in_camera_ones(tmp_path):
    frames_root, pose_root = _write_turning_take(str(tmp_path), degrees_per_frame=2.0)
    camera = build_clip_dataset(clip_cfg(frames_root, pose_root, "camera"), "val", train=False,
                                cache_dir=str(tmp_path / "cache"))
    clip = build_clip_dataset(clip_cfg(frames_root, pose_root, "clip_first_camera"), "val", train=False,
                              cache_dir=str(tmp_path / "cache"))
    assert len(camera) == len(clip) == 2  # clips starting at frames 0 and 5
    for i in range(2):
        cam, _ = camera.clip_xyz(i)
        loc, _ = clip.clip_xyz(i)
        # in each frame's own camera the turning body does not move at all
        assert np.abs(cam - cam[0]).max() < 1e-5
        # in the clip's first camera it turns left (towards camera -x) by 2 degrees per frame about the
        # camera's vertical (y) axis
        np.testing.assert_allclose(loc[0], cam[0], atol=1e-5)
        for k in (5, 19):
            a = math.radians(-2.0 * k)
            about_y = np.array([[math.cos(a), 0.0, math.sin(a)], [0.0, 1.0, 0.0], [-math.sin(a), 0.0, math.cos(a)]])
            err = np.abs(loc[k] - loc[0] @ about_y.T).max()
            opposite = np.abs(loc[k] - loc[0] @ about_y).max()  # a right turn
            assert err < 1e-5 and opposite > 0.01, (k, err, opposite)


def test_step_camera_motion_is_the_turn_and_walk_between_two_step_images(tmp_path):
    """EgoExoClips.step_camera_motion on a body turning left by 2 degrees per frame while walking 2 cm per frame
    along world +x: between two step images (5 frames) the camera turns 10 degrees and, at the first step (when it
    still faces +x), moves 10 cm straight ahead; a point straight ahead then appears to the right."""
    frames_root, pose_root = _write_turning_take(str(tmp_path), degrees_per_frame=2.0, metres_per_frame=0.02)
    ds = build_clip_dataset(clip_cfg(frames_root, pose_root, "camera"), "val", train=False,
                            cache_dir=str(tmp_path / "cache"))
    motion = ds.step_camera_motion(0)  # the clip starting at frame 0: steps at frames 0, 5, 10, 15
    assert motion.shape == (3, 12) and motion.dtype == np.float32
    for t in range(3):
        rel = motion[t, :9].reshape(3, 3).astype(np.float64)
        np.testing.assert_allclose(rel @ rel.T, np.eye(3), atol=1e-5)
        angle = math.degrees(math.acos(np.clip((np.trace(rel) - 1) / 2, -1, 1)))
        assert angle == pytest.approx(10.0, abs=1e-3)
        shift = motion[t, 9:]
        assert np.linalg.norm(shift) == pytest.approx(0.10, abs=1e-5)
        ahead = rel @ np.array([0.0, 0.0, 5.0])  # a point 5 m ahead of camera t, seen from camera t+1 (x right)
        assert ahead[0] > 0.5 and abs(ahead[1]) < 1e-5
    np.testing.assert_allclose(motion[0, 9:], [0.0, 0.0, 0.10], atol=1e-5)  # straight ahead: camera +z
    # later steps: the walk is along world +x while the camera has turned left, so it moves forward and right
    assert motion[2, 9] > 0.02 and motion[2, 11] > 0.05


def test_other_frames_need_the_rotation_and_say_so(tmp_path):
    frames_root, pose_root = _write_turning_take(str(tmp_path), degrees_per_frame=1.0)
    path = os.path.join(pose_root, "val", os.listdir(os.path.join(pose_root, "val"))[0])
    content = json.load(open(path))
    for entry in content.values():  # a fragment written before the key existed
        del entry["rotation"]
    json.dump(content, open(path, "w"))
    cache = str(tmp_path / "cache")
    assert len(build_clip_dataset(clip_cfg(frames_root, pose_root, "camera"), "val", train=False, cache_dir=cache))
    with pytest.raises(ValueError, match="rerun it, or use data.pose_frame='camera'"):
        build_clip_dataset(clip_cfg(frames_root, pose_root, "world"), "val", train=False, cache_dir=cache)


def test_an_unknown_pose_frame_is_a_config_error():
    from internlm.config import ConfigError, load_config

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with pytest.raises(ConfigError, match="data.pose_frame='head'.*clip_first_camera"):
        load_config(os.path.join(repo, "configs/demo/stage2_joint_tiny.py"), [("data.pose_frame", "head")])
