"""The synthetic egocentric world: its raw Ego-Exo4D layout, its geometry, its motion and its determinism."""

from __future__ import annotations

import dataclasses
import filecmp
import json
import os

import cv2
import numpy as np
import pytest
from projectaria_tools.core import calibration

from internlm.data import egoexo_format as fmt
from internlm.data.synthetic import build_take, generate_world, plan_takes, resolve_size
from internlm.data.synthetic.body import simulate
from internlm.data.synthetic.camera import calibration_rays
from internlm.data.synthetic.scene import Material, Solid, random_scene


def read_video(path) -> list[np.ndarray]:
    """All frames of an mp4 as (H, W, 3) uint8 RGB."""
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame[:, :, ::-1])
    capture.release()
    return frames


def extrinsic(world, spec, frame: int) -> np.ndarray:
    """(3, 4) world->camera of the take's Aria camera at ``frame``, as written on disk."""
    poses = fmt.read_json(fmt.camera_pose_path(str(world.egoexo_root), spec.split, spec.take_uid))
    return np.array(poses[fmt.aria_key(poses)]["camera_extrinsics"][str(frame)])


def take_folder(world, spec) -> str:
    return str(world.egoexo_root / spec.root_dir)


def test_raw_layout(synthetic_world):
    w, size = synthetic_world, synthetic_world.size
    takes = fmt.read_takes(str(w.egoexo_root))
    assert len(takes) == size.train_takes + size.val_takes + 1
    assert sum(fmt.is_dropped_take(t["take_name"]) for t in takes) == 1
    specs = plan_takes(w.seed, size)
    assert {s.split for s in specs} == {"train", "val"}
    # the downloader's layout: takes.json at the root, take folders by name (root_dir), the Aria device named
    # in the capture's cameras (one take recorded with aria02)
    assert os.path.exists(w.egoexo_root / "takes.json") and not os.path.exists(w.egoexo_root / "metadata")
    by_uid = {t["take_uid"]: t for t in takes}
    assert sorted(s.aria for s in specs).count("aria02") == 1
    for spec in specs:
        take = by_uid[spec.take_uid]
        folder = fmt.take_dir(str(w.egoexo_root), take)
        assert take["root_dir"] == f"takes/{spec.take_name}" and folder == str(w.egoexo_root / "takes" / spec.take_name)
        assert fmt.aria_device(take) == spec.aria == fmt.aria_device({}, folder)
        video = os.path.join(folder, "frame_aligned_videos", "downscaled", "448", f"{spec.aria}_214-1.mp4")
        assert fmt.find_aria_video(folder, spec.aria) == (video, "downscaled")
        frames = read_video(video)
        assert len(frames) == size.frames_per_take and frames[0].shape == (size.video_size, size.video_size, 3)
        assert cv2.VideoCapture(video).get(cv2.CAP_PROP_FPS) == pytest.approx(30)
        with open(os.path.join(folder, f"{spec.aria}_device_calibration.json")) as f:
            device = calibration.device_calibration_from_json_string(f.read())
        camera = device.get_camera_calib("camera-rgb")
        assert camera.get_model_name() == calibration.CameraModelType.FISHEYE624
        # like the real data, the calibration is at a larger resolution than the video
        assert list(camera.get_image_size()) == [size.video_size * size.calibration_scale] * 2
        manual = fmt.read_json(fmt.manual_pose_path(str(w.egoexo_root), spec.split, spec.take_uid))
        automatic = fmt.read_json(fmt.automatic_pose_path(str(w.egoexo_root), spec.split, spec.take_uid))
        assert len(automatic) == size.frames_per_take and 0 < len(manual) < len(automatic) / 2
        joints_per_frame = [len(v[0]["annotation3D"]) for v in manual.values()]
        assert min(joints_per_frame) < fmt.NUM_JOINTS and max(joints_per_frame) == fmt.NUM_JOINTS
        assert set(manual["%s" % next(iter(manual))][0]["annotation3D"]) <= set(fmt.JOINT_NAMES)
        poses = fmt.read_json(fmt.camera_pose_path(str(w.egoexo_root), spec.split, spec.take_uid))
        assert fmt.aria_key(poses) == spec.aria and {"cam01", "cam02", "cam03", "cam04"} <= set(poses)
        e = np.array(next(iter(poses[spec.aria]["camera_extrinsics"].values())))
        assert e.shape == (3, 4) and fmt.is_rotation(e[:, :3])
    assert len(w.wtour_videos) == size.walks
    walk = read_video(w.wtour_videos[0])
    assert len(walk) == size.walk_frames and walk[0].shape == (size.walk_height, size.walk_width, 3)


@pytest.mark.parametrize("resolution", ["calibration", "video"])
def test_marker_lands_where_the_calibration_projects_it(synthetic_world, resolution):
    """A small emissive ball at a known world point is drawn where the take's calibration FILE and the frame's
    extrinsic (camera_pose FILE) project it, at the calibration's resolution and rescaled to the video's."""
    w = synthetic_world
    spec = plan_takes(w.seed, w.size)[0]
    take = build_take(w.seed, spec, w.size)
    camera = fmt.load_aria_calibration(take_folder(w, spec), spec.aria)[0]
    if resolution == "video":
        camera, note = fmt.fit_calibration_to_video(camera, w.size.video_size, w.size.video_size)
        assert "rescaled" in note
    side = int(camera.get_image_size()[0])
    rays, valid = calibration_rays(camera)
    sensor = dataclasses.replace(take, rays=rays, valid=valid, video_size=side)
    frame = int(np.flatnonzero(take.motion.reach == 0)[5])  # hands down: nothing between the eye and the ball
    e = extrinsic(w, spec, frame)
    rotation, translation = e[:, :3], e[:, 3]
    centre = -rotation.T @ translation
    plain = sensor.render_frame(frame).astype(int)
    for direction in ((0.0, 0.0, 1.0), (0.55, 0.05, 1.0), (-0.1, -0.8, 1.0), (-1.1, 0.4, 1.0)):
        ray_cam = np.array(direction) / np.linalg.norm(direction)
        point = centre + rotation.T @ (0.3 * ray_cam)  # world point 30 cm in front, off-axis up to ~50 deg
        radius = 0.3 * 2.5 / (side * 0.434)  # ~2.5 px in the image (focal ~ 0.434 x side)
        marker = Solid("sphere", tuple(point), (radius, 0, 0), Material((1, 0, 1), (1, 0, 1), emissive=True))
        drawn = np.abs(sensor.render_frame(frame, [marker]).astype(int) - plain).sum(-1) > 30
        assert drawn.sum() >= 4, f"marker {direction} not drawn"
        rows, cols = np.nonzero(drawn)
        expected = camera.project(rotation @ point + translation)
        assert expected is not None
        error = np.hypot(cols.mean() - expected[0], rows.mean() - expected[1])
        assert error < (0.25 if resolution == "calibration" else 0.4), \
            f"marker {direction}: drawn at ({cols.mean():.2f}, {rows.mean():.2f}), " \
            f"calibration says ({expected[0]:.2f}, {expected[1]:.2f})"


def test_video_shows_the_rendered_frames(synthetic_world):
    w = synthetic_world
    spec = plan_takes(w.seed, w.size)[1]
    take = build_take(w.seed, spec, w.size)
    video = read_video(fmt.aria_video_path(take_folder(w, spec), spec.aria))
    def luma(rgb):
        return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY).astype(float)

    for frame in (0, 37, w.size.frames_per_take - 1):
        # mp4 compression only (in luma: 4:2:0 chroma subsampling blurs colours at 64 px, as in any mp4)
        assert np.abs(luma(video[frame]) - luma(take.render_frame(frame))).mean() < 4.0
    # and the frames change with the motion
    assert np.abs(luma(video[0]) - luma(video[45])).mean() > 10.0


def _camera_frame_poses(motion) -> np.ndarray:
    """(T, 17, 3) joints in each frame's head camera (what the preprocessing writes, without label noise)."""
    rotation, centre = motion.cam_to_world[:, :3, :3], motion.cam_to_world[:, :3, 3]
    return np.einsum("tji,tkj->tki", rotation, motion.joints - centre[:, None])


def test_motion_is_predictable_but_not_constant_velocity():
    """Over 0.5 s a constant-velocity extrapolation is clearly wrong (gait, turns, gaze), while a linear model of
    the last 5 poses (fit on other takes) beats both simple baselines: the future follows from the past, most of
    all at short horizons (the head's glances, which move the whole body in the head camera's frame, are only
    partly foreseeable from 5 poses)."""
    past, future = [], []
    for k in range(8):
        rng = np.random.default_rng([123, k])
        poses = _camera_frame_poses(simulate(random_scene(rng), rng, 300))
        for start in range(0, 300 - 20, 3):
            past.append(poses[start:start + 5])
            future.append(poses[start + 5:start + 20])
    past, future = np.array(past), np.array(future)  # (N, 5, 17, 3), (N, 15, 17, 3)

    def mpjpe_cm(pred, truth):
        return float(np.linalg.norm(pred - truth, axis=-1).mean() * 100)

    zero = np.repeat(past[:, -1:], 15, 1)
    constant_velocity = past[:, -1:] + (past[:, -1] - past[:, -2])[:, None] * np.arange(1, 16)[None, :, None, None]
    at_half_second = {name: mpjpe_cm(pred[:, -1], future[:, -1]) for name, pred in
                      (("zero", zero), ("cv", constant_velocity))}
    assert at_half_second["zero"] > 5.0  # the body does move
    assert at_half_second["cv"] > 1.3 * at_half_second["zero"], at_half_second

    def features(x):
        return np.concatenate([x.reshape(len(x), -1), (x[:, 1:] - x[:, :-1]).reshape(len(x), -1),
                               np.ones((len(x), 1))], 1)

    half = len(past) // 2  # first 4 takes fit, last 4 test
    a, b = features(past[:half]), (future[:half] - past[:half, -1:]).reshape(half, -1)
    weights = np.linalg.solve(a.T @ a + 1e-3 * np.eye(a.shape[1]), a.T @ b)
    predicted = (features(past[half:]) @ weights).reshape(future[half:].shape) + past[half:, -1:]
    learned, baseline = mpjpe_cm(predicted, future[half:]), mpjpe_cm(zero[half:], future[half:])
    assert learned < 0.9 * baseline, (learned, baseline)
    first_learned, first_zero = mpjpe_cm(predicted[:, 0], future[half:, 0]), mpjpe_cm(zero[half:, 0], future[half:, 0])
    assert first_learned < 0.6 * first_zero, (first_learned, first_zero)


def test_hands_come_into_view(synthetic_world):
    """Reaching brings the wrists in front of the camera, inside the fisheye image, in a good share of frames."""
    w = synthetic_world
    in_view = []
    for spec in plan_takes(w.seed, w.size)[:3]:
        take = build_take(w.seed, spec, w.size)
        poses = _camera_frame_poses(take.motion)
        for frame in range(len(poses)):
            for joint in ("left-wrist", "right-wrist"):
                p = poses[frame, fmt.JOINT_INDEX[joint]]
                pixel = take.video_calibration.project(p) if p[2] > 0.05 else None
                in_view.append(pixel is not None and 0 <= pixel[0] < w.size.video_size
                               and 0 <= pixel[1] < w.size.video_size)
    assert 0.05 < np.mean(in_view) < 0.8


def test_frames_of_different_takes_look_different(synthetic_world):
    """The nearest thumbnail of a frame (at least 1 s away in its own take) is mostly from the same take."""
    w = synthetic_world
    thumbs, labels, times = [], [], []
    for spec in plan_takes(w.seed, w.size):
        video = read_video(fmt.aria_video_path(take_folder(w, spec), spec.aria))
        for frame in range(0, len(video), 5):
            thumbs.append(cv2.resize(video[frame], (8, 8), interpolation=cv2.INTER_AREA).astype(float).ravel())
            labels.append(spec.index)
            times.append(frame)
    thumbs, labels, times = np.array(thumbs), np.array(labels), np.array(times)
    dist = np.linalg.norm(thumbs[:, None] - thumbs[None], axis=-1)
    too_close = (labels[:, None] == labels[None]) & (np.abs(times[:, None] - times[None]) < 30)
    dist[too_close] = np.inf
    same_take = labels[dist.argmin(1)] == labels
    assert same_take.mean() > 0.6, same_take.mean()


def test_imagefolder(synthetic_world):
    w, size = synthetic_world, synthetic_world.size
    train, val = w.imagefolder / "train", w.imagefolder / "val"
    assert sorted(p.name for p in train.iterdir()) == sorted(p.name for p in val.iterdir())
    assert len(list(train.iterdir())) == size.classes
    means = {}
    for folder in train.iterdir():
        images = [cv2.imread(str(p)) for p in sorted(folder.glob("*.jpg"))]
        assert len(images) == size.images_per_class and images[0].shape == (size.image_size, size.image_size, 3)
        assert len(list((val / folder.name).glob("*.jpg"))) == size.val_images_per_class
        # varied viewpoints and exposures: no two images of a place are alike
        assert min(np.abs(a.astype(int) - b).mean() for i, a in enumerate(images) for b in images[i + 1:]) > 5
        means[folder.name] = np.mean([im.astype(float).reshape(-1, 3).mean(0) for im in images], axis=0)
    assert len(means) == size.classes and sorted(means) == [f"place_{c:02d}" for c in range(size.classes)]
    # each place has its own palette: the mean colours of the classes differ
    colours = np.array(list(means.values()))
    assert min(np.abs(a - b).max() for i, a in enumerate(colours) for b in colours[i + 1:]) > 3


def _small_size():
    return resolve_size("tiny", train_takes=1, val_takes=1, frames_per_take=36, video_size=32, walks=1,
                        walk_frames=20, walk_width=48, walk_height=28, classes=2, images_per_class=2,
                        val_images_per_class=1, image_size=32)


def _tree(root) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root) for f in files)


def test_same_seed_same_world(tmp_path):
    """Same seed -> byte-identical JSON and JPEGs and identical decoded frames, whatever the number of workers;
    another seed -> another world."""
    size = _small_size()
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate_world(str(a), 5, size, workers=1, progress=False)
    generate_world(str(b), 5, size, workers=2, progress=False)
    generate_world(str(c), 6, size, workers=1, progress=False)
    files = _tree(a)
    assert files == _tree(b) and len(files) > 20
    for name in files:
        if name.endswith(".mp4"):
            frames_a, frames_b = read_video(a / name), read_video(b / name)
            assert len(frames_a) == len(frames_b) > 0
            assert all(np.array_equal(x, y) for x, y in zip(frames_a, frames_b)), name
        else:
            assert filecmp.cmp(a / name, b / name, shallow=False), name
    takes_a = json.loads((a / "egoexo4d_v2/takes.json").read_text())
    takes_c = json.loads((c / "egoexo4d_v2/takes.json").read_text())
    assert takes_a[0]["take_uid"] != takes_c[0]["take_uid"]
    walk_a, walk_c = (read_video(next((root / "WTour").glob("*.mp4"))) for root in (a, c))
    assert np.abs(walk_a[0].astype(int) - walk_c[0]).mean() > 10


def test_refuses_to_overwrite(tmp_path):
    size = _small_size()
    (tmp_path / "egoexo4d_v2").mkdir()  # somebody's real data
    with pytest.raises(FileExistsError, match="not written by this generator"):
        generate_world(str(tmp_path), 0, size, progress=False)


def test_privileged_scene_truth_is_written_apart_and_read_back(synthetic_world, tmp_path):
    """Every take's scene truth is written outside the Ego-Exo4D tree, marked privileged, and reads back as the
    walker's own percept at each frame; a missing take is a clear error."""
    from internlm.data.synthetic.privileged import SCENE_TRUTH_FEATURES, SceneTruth, scene_truth, scene_truth_path

    w = synthetic_world
    truth = SceneTruth(str(w.data_root))
    for spec in plan_takes(w.seed, w.size):
        path = scene_truth_path(str(w.data_root), spec.take_uid)
        assert not path.startswith(str(w.egoexo_root))
        content = json.loads(open(path).read())
        assert content["privileged"] is True and tuple(content["columns"]) == SCENE_TRUTH_FEATURES
        want = scene_truth(build_take(w.seed, spec, w.size).motion)  # (T, C) from the simulation itself
        for frame in (0, 37, w.size.frames_per_take - 1):
            np.testing.assert_allclose(truth.at(spec.take_uid, frame), want[frame], atol=1e-4)
    with pytest.raises(FileNotFoundError, match="privileged scene truth"):
        SceneTruth(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no-such-take"):
        truth.at("no-such-take", 0)


def test_scene_truth_is_what_the_walker_acts_on():
    """The privileged scene truth records the walker's own percept: with little clearance ahead it swerves (its
    heading turns faster in the next 0.2 s than when the way is clear), and a reach is far more likely to start
    on a frame where a landmark is within reach in front than elsewhere (where only the random reaches start)."""
    from internlm.data.synthetic.body import DODGE_CLEARANCE
    from internlm.data.synthetic.privileged import SCENE_TRUTH_FEATURES, scene_truth

    blocked, clear, onset_near, onset_far = [], [], [], []
    gap, bearing_sin = SCENE_TRUTH_FEATURES.index("landmark_gap"), SCENE_TRUTH_FEATURES.index("landmark_bearing_sin")
    for k in range(20):
        rng = np.random.default_rng([77, k])
        motion = simulate(random_scene(rng), rng, 300)
        truth = scene_truth(motion)
        turn = np.abs(np.diff(np.unwrap(motion.heading)))  # rad per frame
        for t in range(290):
            rate = turn[t:t + 6].mean()
            (blocked if truth[t, 0] < DODGE_CLEARANCE else clear if truth[t, 0] > 2.0 else []).append(rate)
        onset = np.zeros(300, bool)
        onset[np.flatnonzero((motion.reach[1:] > 0) & (motion.reach[:-1] == 0)) + 1] = True
        near = (truth[:, gap] < 1.6) & (np.abs(truth[:, bearing_sin]) < np.sin(0.6))
        onset_near.append(onset[near])
        onset_far.append(onset[~near])
    assert np.mean(blocked) > 1.5 * np.mean(clear), (np.mean(blocked), np.mean(clear))
    p_near, p_far = np.concatenate(onset_near).mean(), np.concatenate(onset_far).mean()
    assert p_near > 5 * p_far, (p_near, p_far)
