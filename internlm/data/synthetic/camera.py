"""Cameras of the synthetic world: the Aria-like fisheye (a real projectaria-tools FISHEYE624 calibration), the
pinhole cameras of the walks and the ImageFolder, the static exo cameras, and per-pixel rays.

Camera frames follow projectaria-tools: x right, y down, z forward. Pixel (col x, row y) has its centre at (x, y).
"""

from __future__ import annotations

import math

import numpy as np
from projectaria_tools.core import calibration
from projectaria_tools.core.sophus import SE3

from ..egoexo_format import ARIA_RGB_LABEL

# Aria-like RGB fisheye parameters at 1408 px (fx, cx, cy, k0..k5, p0, p1, s0..s3): f, cx, cy scale with the
# resolution, the distortion terms do not. Round-trip project(unproject(p)) is exact over the whole square.
ARIA_REFERENCE_SIZE = 1408
ARIA_REFERENCE_PARAMS = (610.94, 715.11, 716.71, 0.3954, -0.4047, 0.0877, 1.0389, -1.7101, 0.7379,
                         0.00054, -0.00029, -0.00073, 0.00022, 0.00064, -0.00009)
MAX_SOLID_ANGLE = 1.75  # rad, the widest ray the calibration accepts (~100 deg off axis)


def fisheye_calibration(size: int, rng: np.random.Generator, serial: str) -> calibration.CameraCalibration:
    """An Aria-like FISHEYE624 'camera-rgb' calibration of ``size`` x ``size`` px, focal and centre jittered."""
    params = np.array(ARIA_REFERENCE_PARAMS, np.float64)
    params[:3] *= size / ARIA_REFERENCE_SIZE
    params[0] *= rng.uniform(0.97, 1.03)
    params[1:3] += rng.uniform(-0.01, 0.01, 2) * size
    return calibration.CameraCalibration(ARIA_RGB_LABEL, calibration.CameraModelType.FISHEYE624, params,
                                         SE3.from_matrix(np.eye(4)), size, size, None, MAX_SOLID_ANGLE, serial)


def device_calibration_json(camera: calibration.CameraCalibration) -> str:
    """The Aria device-calibration JSON (factory-calibration schema) holding ``camera``; loadable with
    ``device_calibration_from_json_string``."""
    # the loader insists that the origin (the "Device" frame) is named after the first SLAM camera, as in
    # real Aria calibrations; here the RGB camera itself sits at the device origin (T_Device_Camera = identity)
    device = calibration.DeviceCalibration({camera.get_label(): camera}, {}, {}, {}, {},
                                           calibration.DeviceCadExtrinsics(), "DVT-S", "camera-slam-left")
    return calibration.device_calibration_to_json_string(device)


def calibration_rays(camera: calibration.CameraCalibration) -> tuple[np.ndarray, np.ndarray]:
    """Unit rays of every pixel by the camera's own unproject: ((H*W, 3) float32 row-major, (H*W,) valid)."""
    width, height = (int(v) for v in camera.get_image_size())
    rays = np.zeros((height * width, 3), np.float32)
    valid = np.zeros(height * width, bool)
    pixel = np.zeros(2, np.float64)
    for row in range(height):
        for col in range(width):
            pixel[0], pixel[1] = col, row
            ray = camera.unproject(pixel)
            if ray is not None:
                rays[row * width + col] = ray / np.linalg.norm(ray)
                valid[row * width + col] = True
    return rays, valid


def pinhole_rays(width: int, height: int, focal: float) -> np.ndarray:
    """(H*W, 3) float32 unit rays of a centred pinhole camera."""
    cols, rows = np.meshgrid(np.arange(width), np.arange(height))
    rays = np.stack([(cols - (width - 1) / 2) / focal, (rows - (height - 1) / 2) / focal, np.ones_like(cols, float)],
                    -1).reshape(-1, 3)
    return (rays / np.linalg.norm(rays, axis=1, keepdims=True)).astype(np.float32)


def focal_for_fov(width: int, horizontal_fov_deg: float) -> float:
    return width / 2 / math.tan(math.radians(horizontal_fov_deg) / 2)


# camera axes expressed in a body/head frame (x forward, y left, z up): columns = camera x (right), y (down), z
CAMERA_IN_HEAD = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(4, 4) camera -> world of a camera at ``eye`` looking at ``target`` with no roll (world z up)."""
    forward = (target - eye) / np.linalg.norm(target - eye)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    pose = np.eye(4)
    pose[:3, :3] = np.stack([right, down, forward], 1)
    pose[:3, 3] = eye
    return pose


def world_to_camera(cam_to_world: np.ndarray) -> np.ndarray:
    """(4, 4) camera -> world to the (3, 4) world -> camera [R | t] of the Ego-Exo4D camera_pose files."""
    rotation = cam_to_world[:3, :3]
    return np.concatenate([rotation.T, -rotation.T @ cam_to_world[:3, 3:4]], 1)
