"""The Ego-Exo4D JSON content of one synthetic take: manual and automatic body labels, camera poses.

Manual labels: sparse in time (every 3rd frame inside labelled stretches covering about half the take), 3 mm
noise, some joints missing per frame (face joints more often). Automatic labels: every frame, ~1.2 cm
slowly varying noise plus 4 mm jitter, a few joints missing. Camera poses: the Aria camera's world->camera
extrinsic per frame (a short run of frames can be left out, as happens in the real data) and four static exo
cameras looking at the courtyard.
"""

from __future__ import annotations

import numpy as np

from ..egoexo_format import JOINT_NAMES, NUM_JOINTS
from .camera import look_at, world_to_camera
from .scene import Scene

EXO_IMAGE_SIZE = (3840, 2160)
EXO_FOCAL = 1800.0
FACE_JOINTS = 5  # the first five joints (nose, eyes, ears) are missed more often


def exo_cameras(scene: Scene) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """cam01..cam04 at the courtyard corners: name -> (3x3 intrinsics, 3x4 world->camera)."""
    room = scene.room
    intrinsics = np.array([[EXO_FOCAL, 0, EXO_IMAGE_SIZE[0] / 2], [0, EXO_FOCAL, EXO_IMAGE_SIZE[1] / 2], [0, 0, 1]])
    cams = {}
    for i, (sx, sy) in enumerate(((1, 1), (-1, 1), (-1, -1), (1, -1))):
        eye = np.array([0.85 * sx * room.half_x, 0.85 * sy * room.half_y, 2.2])
        cams[f"cam{i + 1:02d}"] = (intrinsics, world_to_camera(look_at(eye, np.array([0.0, 0.0, 1.0]))))
    return cams


def _project_2d(joints: np.ndarray, cams: dict) -> dict:
    """(T, 17, 3) world joints -> {cam: ((T, 17, 2) pixels rounded to 0.1, (T, 17) in front and inside the view)}."""
    out = {}
    for name, (intrinsics, extrinsic) in cams.items():
        cam_points = joints @ extrinsic[:, :3].T + extrinsic[:, 3]  # (T, 17, 3)
        depth = np.maximum(cam_points[..., 2:], 1e-6)
        pixels = cam_points[..., :2] / depth @ intrinsics[:2, :2].T + intrinsics[:2, 2]
        inside = (cam_points[..., 2] > 0.1) & np.all((pixels >= 0) & (pixels < EXO_IMAGE_SIZE), axis=-1)
        out[name] = (np.round(pixels, 1), inside)
    return out


def _frame_label(joints: np.ndarray, present: np.ndarray, views: np.ndarray, labels_2d: dict, frame: int,
                 placement: str) -> list:
    """One frame's [{"annotation3D": ..., "annotation2D": ...}] as in Ego-Exo4D; absent joints are left out.

    joints (17, 3) world; present (17,) bool; views (17,) int; labels_2d: _project_2d of the noisy joints."""
    coords = np.round(joints, 6).tolist()
    labels_3d = {JOINT_NAMES[j]: {"x": coords[j][0], "y": coords[j][1], "z": coords[j][2],
                                  "num_views_for_3d": int(views[j])}
                 for j in range(NUM_JOINTS) if present[j]}
    labels_2d_frame = {}
    for cam, (pixels, inside) in labels_2d.items():
        uv = pixels[frame].tolist()
        labels_2d_frame[cam] = {JOINT_NAMES[j]: {"x": uv[j][0], "y": uv[j][1], "placement": placement}
                                for j in np.flatnonzero(inside[frame] & present)}
    return [{"annotation3D": labels_3d, "annotation2D": labels_2d_frame}]


def body_annotations(joints: np.ndarray, rng: np.random.Generator, cams: dict) -> tuple[dict, dict]:
    """(T, 17, 3) true world joints -> (manual, automatic) {str(frame): [label]} dicts."""
    n = len(joints)
    # manual: labelled stretches covering ~half the take, every 3rd frame inside them
    labelled = np.zeros(n, bool)
    start = int(rng.integers(0, 20))
    while start < n:
        length = int(rng.integers(30, 90))
        labelled[start:start + length] = True
        start += length + int(rng.integers(20, 80))
    labelled &= (np.arange(n) % 3) == int(rng.integers(0, 3))
    drop_manual = np.where(np.arange(NUM_JOINTS) < FACE_JOINTS, 0.15, 0.06)
    manual_frames = np.flatnonzero(labelled)
    noisy = joints[manual_frames] + rng.normal(0, 0.003, (len(manual_frames), NUM_JOINTS, 3))
    present = rng.uniform(size=(len(manual_frames), NUM_JOINTS)) >= drop_manual
    views = rng.integers(2, 5, (len(manual_frames), NUM_JOINTS))
    labels_2d = _project_2d(noisy, cams)
    manual = {str(f): _frame_label(noisy[i], present[i], views[i], labels_2d, i, "manual")
              for i, f in enumerate(manual_frames)}
    # automatic: every frame; slowly varying error (moving average of white noise) plus jitter
    slow = rng.normal(0, 0.012, (n + 15, NUM_JOINTS, 3))
    slow = np.stack([slow[i:i + 15].mean(0) for i in range(n)]) * np.sqrt(15)
    noisy = joints + slow + rng.normal(0, 0.004, (n, NUM_JOINTS, 3))
    present = rng.uniform(size=(n, NUM_JOINTS)) >= 0.03
    views = rng.integers(2, 5, (n, NUM_JOINTS))
    labels_2d = _project_2d(noisy, cams)
    automatic = {str(f): _frame_label(noisy[f], present[f], views[f], labels_2d, f, "auto") for f in range(n)}
    return manual, automatic


def camera_pose_json(take_uid: str, take_name: str, aria_intrinsics: np.ndarray, cam_to_world: np.ndarray,
                     cams: dict, missing_frames: set[int], aria: str = "aria01") -> dict:
    """The camera_pose/{take_uid}.json content. cam_to_world: (T, 4, 4) Aria camera poses; ``aria``: the device."""
    extrinsics = {str(f): np.round(world_to_camera(pose), 8).tolist()
                  for f, pose in enumerate(cam_to_world) if f not in missing_frames}
    content = {"metadata": {"take_uid": take_uid, "take_name": take_name, "synthetic": True,
                            "note": f"{aria} intrinsics: fisheye focal/centre at the calibration resolution"},
               aria: {"camera_intrinsics": np.round(aria_intrinsics, 6).tolist(), "camera_extrinsics": extrinsics}}
    for name, (intrinsics, extrinsic) in cams.items():
        content[name] = {"camera_intrinsics": intrinsics.tolist(), "camera_extrinsics": np.round(extrinsic, 8).tolist(),
                         "distortion_coeffs": [0.0, 0.0, 0.0, 0.0]}
    return content
