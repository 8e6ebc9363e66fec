"""The Ego-Exo4D preprocessing scripts on the synthetic world: output formats (docs/data_formats.md), geometry, bad
input, resuming, and WalkingTours frame extraction."""

from __future__ import annotations

import json
import math
import os
import shutil

import cv2
import numpy as np
import pytest
from conftest import load_script
from projectaria_tools.core import calibration
from projectaria_tools.core.sophus import SE3

from internlm.data import egoexo_format as fmt
from internlm.data.synthetic import plan_takes
from internlm.data.synthetic.camera import calibration_rays, look_at
from internlm.data.synthetic.raycast import render
from internlm.data.synthetic.scene import Material, Room, Scene, Solid

undistort = load_script("undistort_egovideos")
body_pose = load_script("preprocess_egoexo_body_pose")
extract = load_script("extract_frames")


def copy_raw_world(world, dst) -> str:
    """A private copy of the raw Ego-Exo4D folder (without processed outputs) -> its root."""
    root = os.path.join(dst, "egoexo4d_v2")
    shutil.copytree(world.egoexo_root, root, ignore=shutil.ignore_patterns("processed_data"))
    return root


def take_folder(root, spec) -> str:
    """The take's folder as the downloader names it (takes/{take_name})."""
    return os.path.join(str(root), spec.root_dir)


def calibration_file(root, spec) -> str:
    return os.path.join(take_folder(root, spec), f"{spec.aria}_device_calibration.json")


def kept_specs(world):
    return [s for s in plan_takes(world.seed, world.size) if not fmt.is_dropped_take(s.take_name)]


def bouldering_uid(world) -> str:
    return next(s.take_uid for s in plan_takes(world.seed, world.size) if fmt.is_dropped_take(s.take_name))


# ---------------------------------------------------------------- formats
def test_pose_fragments_follow_the_spec(processed_world):
    w = processed_world
    assert {s: sorted(u) for s, u in w.takes.items()} == {
        split: sorted(s.take_uid for s in kept_specs(w) if s.split == split) for split in ("train", "val")}
    for split in ("train", "val"):
        fragments = fmt.list_pose_fragments(str(w.pose_root / split))
        assert bouldering_uid(w) not in fragments
        for uid, paths in fragments.items():
            contents = [json.loads(open(p).read()) for p in paths]
            assert len(contents) >= 2  # 120 frames -> 100 + 25
            for path, content in zip(paths, contents):
                frames = sorted(int(k) for k in content)
                assert os.path.basename(path) == f"{uid}_{frames[0]}-{frames[-1]}.json"
                for entry in content.values():
                    assert set(entry) == {"pose", "confidence", "trajectory", "rotation"}
                    assert fmt.is_rotation(np.array(entry["rotation"]), tol=1e-5)
                    pose, confidence = np.array(entry["pose"]), np.array(entry["confidence"])
                    assert pose.shape == (17, 3) and confidence.shape == (17,) and len(entry["trajectory"]) == 3
                    assert set(confidence.tolist()) <= {0, 1}
                    assert np.array_equal(confidence == 0, np.all(pose == -1, axis=1))
            for previous, following in zip(contents, contents[1:]):
                assert len(previous) == fmt.FRAGMENT_LENGTH
                tail = sorted(previous, key=int)[-fmt.FRAGMENT_OVERLAP:]
                assert sorted(following, key=int)[:fmt.FRAGMENT_OVERLAP] == tail
                assert all(previous[k] == following[k] for k in tail)
            merged = fmt.load_take_poses(paths)
            assert merged.pose.shape == (len(merged.frames), 17, 3) and not merged.dropped
            assert merged.confidence.min() == 0  # some joints are missing ...
            assert merged.confidence.mean() > 0.8  # ... most are not


def test_frames_are_every_fifth_video_frame(processed_world):
    w = processed_world
    assert not (w.frames_root / bouldering_uid(w)).exists()
    for spec in kept_specs(w):
        folder = w.frames_root / spec.take_uid / "aria01_214-1"
        expected = {f"frame_{i}.jpg" for i in range(0, w.size.frames_per_take, 5)}
        assert {p.name for p in folder.iterdir()} == expected | {fmt.DONE_MARKER}
        image = cv2.imread(str(folder / "frame_15.jpg"))
        assert image.shape == (w.frame_size, w.frame_size, 3) and image.std() > 10


def _raw_labels(world, spec):
    root = str(world.egoexo_root)
    manual = fmt.read_json(fmt.manual_pose_path(root, spec.split, spec.take_uid))
    automatic = fmt.read_json(fmt.automatic_pose_path(root, spec.split, spec.take_uid))
    poses = fmt.read_json(fmt.camera_pose_path(root, spec.split, spec.take_uid))
    return manual, automatic, {int(k): np.array(v) for k, v in poses[spec.aria]["camera_extrinsics"].items()}


def test_pose_is_the_world_joint_in_that_frames_camera(processed_world):
    """pose = R X + t of THAT frame's extrinsic (1e-5), manual label where there is one, else automatic; a joint
    the label lacks is -1 with confidence 0; trajectory = the camera centre -R^T t; rotation = R."""
    w = processed_world
    checked_manual = 0
    for spec in kept_specs(w):
        manual, automatic, extrinsics = _raw_labels(w, spec)
        merged = fmt.load_take_poses(fmt.list_pose_fragments(str(w.pose_root / spec.split))[spec.take_uid])
        labelled = sorted(set(map(int, manual)) | set(map(int, automatic)))
        assert merged.frames.tolist() == [f for f in labelled if f in extrinsics]
        for row, frame in enumerate(merged.frames):
            e = extrinsics[int(frame)]
            source = manual.get(str(frame)) or automatic[str(frame)]
            joints3d = source[0]["annotation3D"]
            for j, name in enumerate(fmt.JOINT_NAMES):
                if name in joints3d:
                    world_joint = np.array([joints3d[name][c] for c in "xyz"])
                    np.testing.assert_allclose(merged.pose[row, j], e[:, :3] @ world_joint + e[:, 3], atol=1e-5)
                    assert merged.confidence[row, j] == 1
                else:
                    assert merged.confidence[row, j] == 0 and np.all(merged.pose[row, j] == -1)
            np.testing.assert_allclose(merged.trajectory[row], -e[:, :3].T @ e[:, 3], atol=1e-5)
            np.testing.assert_allclose(merged.rotation[row], e[:, :3], atol=1e-6)
            if str(frame) in manual:  # the automatic label differs here, so this really checks the choice
                auto = automatic[str(frame)][0]["annotation3D"]
                common = [n for n in joints3d if n in auto]
                assert max(abs(joints3d[n]["x"] - auto[n]["x"]) for n in common) > 1e-3
                checked_manual += 1
    assert checked_manual > 50


def test_frames_without_camera_pose_are_dropped(processed_world):
    w = processed_world
    take = next(t for t in w.manifest["takes"] if t["missing_camera_frames"])
    merged = fmt.load_take_poses(fmt.list_pose_fragments(str(w.pose_root / take["split"]))[take["take_uid"]])
    assert not set(take["missing_camera_frames"]) & set(merged.frames.tolist())
    assert len(merged.frames) == take["frames"] - len(take["missing_camera_frames"])


# ---------------------------------------------------------------- undistortion geometry
def _straight_edge_scene() -> Scene:
    dark = Material((0.05, 0.05, 0.05), (0.05, 0.05, 0.05), emissive=True)
    scene = Scene(Room(100.0, 100.0, 0.0, (dark,) * 4), dark, (0.05,) * 3, (0.05,) * 3, (0.0, 0.0, 1.0),
                  fog_distance=1e9)
    # a white wall 3 m ahead whose vertical edge is 2.2 m to the right of the optical axis (~37 deg)
    scene.solids.append(Solid("box", (3.0, -12.2, 5.0), (0.05, 10.0, 10.0),
                              Material((1.0, 1.0, 1.0), (1.0, 1.0, 1.0), emissive=True)))
    return scene


def _edge_line_residual(image: np.ndarray) -> float:
    """Largest distance (px) of the dark->white edge, found per row with sub-pixel interpolation, to its line fit."""
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(float)
    rows, xs = [], []
    half = (gray.max() + gray.min()) / 2
    for row in range(int(0.1 * len(gray)), int(0.9 * len(gray))):
        profile = gray[row]
        crossing = np.flatnonzero((profile[:-1] < half) & (profile[1:] >= half))
        if len(crossing) == 1:
            i = crossing[0]
            rows.append(row)
            xs.append(i + (half - profile[i]) / (profile[i + 1] - profile[i]))
    assert len(rows) > 0.6 * len(gray), "edge not found"
    fit = np.polyval(np.polyfit(rows, xs, 1), rows)
    return float(np.max(np.abs(np.array(xs) - fit)))


def test_undistorted_straight_edge_is_straight(synthetic_world):
    """A straight edge, seen through the take's fisheye calibration (from its file, rendered at the sensor
    resolution, area-averaged to half of it so the rescale path runs), is curved in the fisheye image and
    straight (line-fit residual < 1 px) after the undistortion's pixel maps."""
    w = synthetic_world
    spec = kept_specs(w)[0]
    sensor_camera, _ = fmt.load_aria_calibration(take_folder(w.egoexo_root, spec), spec.aria)
    sensor = int(sensor_camera.get_image_size()[0])
    side = sensor // 2
    rays, valid = calibration_rays(sensor_camera)
    sharp = render(_straight_edge_scene(), rays, look_at(np.array([0.0, 0.0, 5.0]), np.array([3.0, 0.0, 5.0])),
                   sensor, sensor, valid)
    fisheye = cv2.resize(sharp, (side, side), interpolation=cv2.INTER_AREA)
    source, note = fmt.fit_calibration_to_video(sensor_camera, side, side)
    assert "rescaled" in note
    target = undistort.pinhole_calibration(source, side, side)
    map_x, map_y = undistort.pixel_maps(target, source, side, side)
    pinhole = cv2.remap(fisheye, map_x, map_y, cv2.INTER_LINEAR)
    curved, straight = _edge_line_residual(fisheye), _edge_line_residual(pinhole)
    assert curved > 3.0, curved
    assert straight < 1.0, straight
    # and the edge is where the pinhole camera puts it: x = cx + f * 2.2 / 2.95
    expected = target.project(np.array([2.2, 0.0, 2.95]))[0]
    gray = cv2.cvtColor(pinhole, cv2.COLOR_RGB2GRAY).astype(float)[side // 2]
    assert abs(np.argmax(gray > (gray.max() + gray.min()) / 2) - expected) < 1.0


def test_pixel_maps_match_distort_by_calibration(synthetic_world):
    """The per-take pixel map + cv2.remap gives distort_by_calibration's image (within interpolation rounding)."""
    w = synthetic_world
    spec = kept_specs(w)[0]
    folder = take_folder(w.egoexo_root, spec)
    ok, frame = cv2.VideoCapture(fmt.aria_video_path(folder, spec.aria)).read()
    assert ok
    side = frame.shape[1]
    source, _ = fmt.fit_calibration_to_video(fmt.load_aria_calibration(folder, spec.aria)[0], side, side)
    target = undistort.pinhole_calibration(source, side, 2 * side)
    reference = calibration.distort_by_calibration(frame, target, source).astype(int)
    mapped = cv2.remap(frame, *undistort.pixel_maps(target, source, side, side), cv2.INTER_LINEAR).astype(int)
    inner = np.s_[4:-4, 4:-4]
    assert np.abs(mapped - reference)[inner].max() <= 2
    assert np.abs(mapped - reference).mean() < 0.7


def _fisheye(size_w: int, size_h: int, focal: float):
    params = np.array([focal, size_w / 2, size_h / 2, 0.39, -0.4, 0.09, 1.04, -1.7, 0.74, 0, 0, 0, 0, 0, 0])
    return calibration.CameraCalibration("camera-rgb", calibration.CameraModelType.FISHEYE624, params,
                                         SE3.from_matrix(np.eye(4)), size_w, size_h, None, 1.75, "t")


def test_calibration_rescale_rules():
    # a real Aria RGB calibration at 2880 px goes through the canonical 2880 -> 1408 transform (crop + scale)
    full = _fisheye(2880, 2880, 1221.9)
    fitted, note = fmt.fit_calibration_to_video(full, 448, 448)
    assert "2880 -> 1408" in note and list(fitted.get_image_size()) == [448, 448]
    canonical = calibration.rescale_camera_calibration(full, np.array([1408, 1408], np.int32),
                                                       calibration.DeviceVersion.Gen1, "camera-rgb")
    assert fitted.get_focal_lengths()[0] == pytest.approx(canonical.get_focal_lengths()[0] * 448 / 1408, rel=1e-9)
    plain = full.get_focal_lengths()[0] * 448 / 2880
    assert abs(fitted.get_focal_lengths()[0] / plain - 1) > 0.01  # a plain rescale would be silently wrong
    with pytest.raises(ValueError, match="1408x1056 px but the video is 448x448"):
        fmt.fit_calibration_to_video(_fisheye(1408, 1056, 611.0), 448, 448)


# ---------------------------------------------------------------- bad input
def _write_json(path, content):
    with open(path, "w") as f:
        f.write(json.dumps(content))


def test_bad_inputs_are_reported_and_skipped(synthetic_world, tmp_path):
    w = synthetic_world
    root = copy_raw_world(w, tmp_path)
    a, b, c, d, e = kept_specs(w)
    # videos and calibrations: a truncated video, a calibration of another aspect, a missing calibration
    video_a = fmt.aria_video_path(take_folder(root, a), a.aria)
    data = open(video_a, "rb").read()
    open(video_a, "wb").write(data[: len(data) * 6 // 10])
    from internlm.data.synthetic.camera import device_calibration_json

    open(calibration_file(root, b), "w").write(device_calibration_json(_fisheye(256, 192, 111.0)))
    os.remove(calibration_file(root, c))
    # poses: NaN, a missing key and a missing coordinate in a's manual labels; b's camera poses missing;
    # c's automatic file truncated; a NaN extrinsic in e
    manual_path = fmt.manual_pose_path(root, a.split, a.take_uid)
    manual = fmt.read_json(manual_path)
    nan_frame, no_key_frame, no_z_frame = sorted(manual, key=int)[:3]
    next(iter(manual[nan_frame][0]["annotation3D"].values()))["x"] = float("nan")
    del manual[no_key_frame][0]["annotation3D"]
    del next(iter(manual[no_z_frame][0]["annotation3D"].values()))["z"]
    _write_json(manual_path, manual)
    os.remove(fmt.camera_pose_path(root, b.split, b.take_uid))
    auto_c = fmt.automatic_pose_path(root, c.split, c.take_uid)
    open(auto_c, "w").write(open(auto_c).read()[:1000])
    poses_e_path = fmt.camera_pose_path(root, e.split, e.take_uid)
    poses_e = fmt.read_json(poses_e_path)
    poses_e[e.aria]["camera_extrinsics"]["10"][0][0] = float("nan")
    _write_json(poses_e_path, poses_e)

    frames_out, poses_out = str(tmp_path / "frames"), str(tmp_path / "poses")
    report = undistort.run(root, frames_out, size=32, workers=2, progress=False, echo=False)
    assert report.counts == {"done": 2, "failed": 3}
    messages = "\n".join(report.problems.messages)
    assert report.problems.counts == {"unreadable video": 1, "calibration size mismatch": 1,
                                      "missing calibration": 1}
    assert video_a in messages
    assert f"take {b.take_name}" in messages and "256x192 px but the video is 64x64 px" in messages
    assert calibration_file(root, c) in messages and "take_vrs_noimagestream" in messages
    for spec in (a, b, c):
        assert not os.path.exists(fmt.processed_frames_dir(frames_out, spec.take_uid))
    for spec in (d, e):
        assert len(os.listdir(fmt.processed_frames_dir(frames_out, spec.take_uid))) == w.size.frames_per_take // 5 + 1

    summary = body_pose.run(root, poses_out, progress=False, echo=False)
    messages = "\n".join(summary.problems.messages)
    assert summary.problems.counts["bad manual pose frames"] == 3
    assert summary.problems.counts["missing camera-pose file"] == 1
    assert summary.problems.counts["unreadable automatic pose file"] == 1
    assert summary.problems.counts["bad camera extrinsics"] == 1
    assert manual_path in messages and "NaN" in messages and "annotation3D" in messages and "lacks x/y/z" in messages
    assert fmt.camera_pose_path(root, b.split, b.take_uid) in messages and auto_c in messages
    assert poses_e_path in messages
    assert summary.takes[a.split] + summary.takes[e.split] >= 2 and sum(summary.takes.values()) == 4  # all but b

    # a's bad manual frames fall back to the automatic label (not zeros, not dropped)
    merged_a = fmt.load_take_poses(fmt.list_pose_fragments(os.path.join(poses_out, a.split))[a.take_uid])
    automatic_a = fmt.read_json(fmt.automatic_pose_path(root, a.split, a.take_uid))
    poses_a = fmt.read_json(fmt.camera_pose_path(root, a.split, a.take_uid))[a.aria]["camera_extrinsics"]
    for bad_frame in (nan_frame, no_key_frame, no_z_frame):
        row = merged_a.frames.tolist().index(int(bad_frame))
        labels = automatic_a[bad_frame][0]["annotation3D"]
        assert merged_a.confidence[row].sum() == len(labels)
        e_a = np.array(poses_a[bad_frame])
        for name, joint in labels.items():
            expected = e_a[:, :3] @ [joint["x"], joint["y"], joint["z"]] + e_a[:, 3]
            np.testing.assert_allclose(merged_a.pose[row, fmt.JOINT_INDEX[name]], expected, atol=1e-5)
    # c keeps its manual frames only; e loses frame 10
    merged_c = fmt.load_take_poses(fmt.list_pose_fragments(os.path.join(poses_out, c.split))[c.take_uid])
    assert len(merged_c.frames) == len(fmt.read_json(fmt.manual_pose_path(root, c.split, c.take_uid)))
    merged_e = fmt.load_take_poses(fmt.list_pose_fragments(os.path.join(poses_out, e.split))[e.take_uid])
    assert 10 not in merged_e.frames.tolist() and 11 in merged_e.frames.tolist()
    # something was processed: both scripts exit 0
    assert undistort.main(["--root", root, "--out", frames_out, "--size", "32", "--no-progress"]) == 0
    assert body_pose.main(["--root", root, "--out", poses_out, "--no-progress"]) == 0


def test_exit_status_when_nothing_can_be_processed(synthetic_world, tmp_path, capsys):
    w = synthetic_world
    root = copy_raw_world(w, tmp_path)
    for spec in kept_specs(w):
        open(fmt.aria_video_path(take_folder(root, spec), spec.aria), "wb").write(b"not a video")
        os.remove(fmt.camera_pose_path(root, spec.split, spec.take_uid))
    assert undistort.main(["--root", root, "--size", "32", "--no-progress", "--workers", "1"]) == 1
    assert body_pose.main(["--root", root, "--out", str(tmp_path / "poses"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "cannot open or decode the video" in err and "camera-pose file missing" in err


def test_resume_skips_finished_takes_and_redoes_half_written_ones(synthetic_world, tmp_path):
    w = synthetic_world
    root = copy_raw_world(w, tmp_path)
    out = str(tmp_path / "frames")
    first = undistort.run(root, out, size=32, workers=1, progress=False, echo=False)
    assert first.counts == {"done": 5}
    finished, half = kept_specs(w)[0].take_uid, kept_specs(w)[1].take_uid
    finished_frame = fmt.processed_frame_path(out, finished, 10)
    stamp = os.stat(finished_frame).st_mtime_ns
    # an interrupted take: marker not yet written, some frames missing, a stray file
    half_dir = fmt.processed_frames_dir(out, half)
    os.remove(os.path.join(half_dir, fmt.DONE_MARKER))
    for name in sorted(os.listdir(half_dir))[:5]:
        os.remove(os.path.join(half_dir, name))
    open(os.path.join(half_dir, "frame_999.jpg"), "wb").write(b"stale")
    second = undistort.run(root, out, size=32, workers=1, progress=False, echo=False)
    assert second.counts == {"done": 1, "already done": 4}
    assert os.stat(finished_frame).st_mtime_ns == stamp
    assert sorted(os.listdir(half_dir)) == sorted([fmt.DONE_MARKER] + [f"frame_{i}.jpg" for i in
                                                                       range(0, w.size.frames_per_take, 5)])
    # another output size is another job: every take is redone
    assert undistort.run(root, out, size=48, workers=1, progress=False, echo=False).counts == {"done": 5}
    assert cv2.imread(finished_frame).shape == (48, 48, 3)


# ---------------------------------------------------------------- WalkingTours frames
def test_extract_frames_numbers_from_one(synthetic_world, tmp_path, capsys):
    video = str(synthetic_world.wtour_videos[0])
    broken = str(tmp_path / "Walking_Tour_Broken.mp4")
    open(broken, "wb").write(b"\x00" * 1000)
    out = tmp_path / "frames"
    assert extract.main([video, broken, "--out", str(out), "--no-progress"]) == 0
    assert broken in capsys.readouterr().err
    folder = out / os.path.splitext(os.path.basename(video))[0]
    names = sorted(p.name for p in folder.glob("*.jpg"))
    n = synthetic_world.size.walk_frames
    assert names == [f"frame_{i:07d}.jpg" for i in range(1, n + 1)]
    ok, first = cv2.VideoCapture(video).read()
    assert ok and np.abs(cv2.imread(str(folder / "frame_0000001.jpg")).astype(int) - first).mean() < 6  # JPEG
    assert not (out / "Walking_Tour_Broken").exists()
    assert extract.main([broken, "--out", str(out), "--no-progress"]) == 1
    # every 3rd frame keeps the video numbering
    assert extract.main([video, "--out", str(tmp_path / "sub"), "--every", "3", "--no-progress"]) == 0
    sub = sorted(p.name for p in (tmp_path / "sub" / folder.name).glob("*.jpg"))
    assert sub == [f"frame_{i + 1:07d}.jpg" for i in range(0, n, 3)] and math.ceil(n / 3) == len(sub)
