"""The on-disk layouts of Ego-Exo4D (also in docs/data_formats.md): constants, path templates and small readers.

RAW layout: what Ego-Exo4D's downloader writes (``egoexo -o ROOT --parts ...``; docs/data_formats.md lists the
parts and the documentation this follows), and what ``make_synthetic_egoworld.py`` writes. Under ``root``
(default ``data/egoexo4d_v2``):
  takes.json                                                   part metadata: [{take_uid, take_name, root_dir,
                                                               capture: {cameras: [{cam_id, is_ego}]}, ...}]
                                                               (metadata/takes.json, of older trees, is accepted)
  annotations/ego_pose/{split}/body/annotation/{take_uid}.json       manual 3D body labels (sparse)
  annotations/ego_pose/{split}/body/automatic/{take_uid}.json        automatic 3D body labels (dense)
      {frame_number: [{"annotation3D": {joint: {"x","y","z","num_views_for_3d"}}, "annotation2D": {...}}]}
      world coordinates in metres; a joint that no view saw is absent.
  annotations/ego_pose/{split}/camera_pose/{take_uid}.json
      {"metadata": {...}, "aria01": {"camera_intrinsics": 3x3, "camera_extrinsics": {frame: 3x4 world->camera}},
       "cam01": {...}, ...}; the Aria entry is the first key containing "aria".
  {root_dir} = takes/{take_name}/                              one folder per take (takes.json's root_dir)
      frame_aligned_videos/downscaled/448/{aria}_214-1.mp4     part downscaled_takes/448: fisheye RGB, 448 px, 30 fps
      frame_aligned_videos/{aria}_214-1.mp4                    part takes: the same at full resolution (1408 px)
      {aria}_noimagestreams.vrs                                part take_vrs_noimagestream: calibration, no images
      {aria}.vrs                                               part take_vrs: calibration and the raw streams
      {aria}_device_calibration.json                           the synthetic world's calibration (below)
  {aria} is the take's Aria device, aria01, aria02, ...: the ego camera of takes.json's capture, else the one
  the take folder's files name. Take folders named by take_uid (as the authors' scripts assumed) are found too.

Calibration JSON (``{aria}_device_calibration.json``, synthetic data only): an Aria device calibration in the
factory-calibration schema, exactly what ``projectaria_tools.core.calibration.device_calibration_to_json_string``
writes and ``device_calibration_from_json_string`` reads (the "calib_json" a VRS file carries); its "camera-rgb"
entry is a FISHEYE624 camera ("FisheyeRadTanThinPrism", params fx, cx, cy, k0..k5, p0, p1, s0..s3). Its image size
may be larger than the video's (as with real data: calibration 2880 or 1408 px, video 1408 or 448 px):
``fit_calibration_to_video`` rescales.

PROCESSED layout (what the preprocessing scripts write and the loaders read), keyed by take_uid:
  {root}/processed_data/{take_uid}/aria01_214-1/frame_{i}.jpg    undistorted pinhole frames, i = 0, 5, 10, ...
      (the folder is named aria01_214-1 whatever the take's device, as in the authors' processed data)
  egoexo4d_body_pose/{split}/{take_uid}_{first}-{last}.json    ~100-frame fragments, overlapping by 5 frames:
      {frame: {"pose": 17x3 joints in the Aria camera frame of that frame (metres; missing joint -> [-1,-1,-1]),
               "confidence": 17 flags (1 annotated, 0 missing),
               "trajectory": 3 (the Aria camera centre of that frame in world coordinates, metres),
               "rotation": 3x3 (the frame's world->camera rotation R; with the trajectory c, a camera-frame
                           point p is the world point R^T p + c)}}
      "rotation" is what lets a loader put a clip's poses into another frame (data.pose_frame); fragments
      written before it existed load in their per-frame camera frame only.
Camera frames follow projectaria-tools: x right, y down (in the image), z forward (optical axis).
"""

from __future__ import annotations

import glob
import json
import math
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Mapping, Optional

import numpy as np

from internlm.config.schema import PROCESSED_FRAME_STEP

# The 17 body joints of Ego-Exo4D, in the order used everywhere in this project.
JOINT_NAMES = (
    "nose", "left-eye", "right-eye", "left-ear", "right-ear",
    "left-shoulder", "right-shoulder", "left-elbow", "right-elbow", "left-wrist", "right-wrist",
    "left-hip", "right-hip", "left-knee", "right-knee", "left-ankle", "right-ankle",
)
NUM_JOINTS = len(JOINT_NAMES)
JOINT_INDEX = {name: i for i, name in enumerate(JOINT_NAMES)}
MISSING_JOINT_VALUE = -1.0  # a joint no view saw is written as [-1, -1, -1] with confidence 0

SPLITS = ("train", "val")
FPS = 30
FRAME_STEP = PROCESSED_FRAME_STEP  # processed_data keeps every 5th video frame (the config validates strides by it)
FRAGMENT_LENGTH = 100  # frames per processed pose fragment
FRAGMENT_OVERLAP = 5  # a fragment's first frames repeat the previous fragment's last frames
DROPPED_TAKE_KEYWORD = "bouldering"  # takes whose name contains this are left out

ARIA_RGB_LABEL = "camera-rgb"
ARIA_RGB_STREAM = "214-1"  # the Aria RGB camera's VRS stream id, in the video names
DEFAULT_ARIA = "aria01"
ARIA_STREAM = f"{DEFAULT_ARIA}_{ARIA_RGB_STREAM}"  # the processed frames' folder name (any device)
TAKES_JSON = "takes.json"
LEGACY_TAKES_JSON = os.path.join("metadata", "takes.json")
# the Aria RGB video of a take: (kind, folder in the take folder, Ego-Exo4D part that holds it)
VIDEO_KINDS = {
    "downscaled": (os.path.join("frame_aligned_videos", "downscaled", "448"), "downscaled_takes/448"),
    "full": ("frame_aligned_videos", "takes"),
}
# the take's calibration source, in the order they are read: (file name suffix after {aria}, part)
CALIBRATION_SOURCES = (("_noimagestreams.vrs", "take_vrs_noimagestream"), (".vrs", "take_vrs"),
                       ("_device_calibration.json", None))
DONE_MARKER = ".done"  # written last into a finished processed_data take folder


def download_command(root: str, *parts: str) -> str:
    """The downloader command that fetches ``parts`` into ``root``."""
    return f"egoexo -o {root} --parts {' '.join(parts)}"


# ---------------------------------------------------------------- raw paths
def takes_json_path(root: str) -> str:
    """ROOT/takes.json (part metadata), else ROOT/metadata/takes.json (older trees) when only that exists."""
    path = os.path.join(root, TAKES_JSON)
    legacy = os.path.join(root, LEGACY_TAKES_JSON)
    return legacy if not os.path.exists(path) and os.path.exists(legacy) else path


def ego_pose_dir(root: str, split: str) -> str:
    return os.path.join(root, "annotations", "ego_pose", split)


def manual_pose_path(root: str, split: str, take_uid: str) -> str:
    return os.path.join(ego_pose_dir(root, split), "body", "annotation", f"{take_uid}.json")


def automatic_pose_path(root: str, split: str, take_uid: str) -> str:
    return os.path.join(ego_pose_dir(root, split), "body", "automatic", f"{take_uid}.json")


def camera_pose_path(root: str, split: str, take_uid: str) -> str:
    return os.path.join(ego_pose_dir(root, split), "camera_pose", f"{take_uid}.json")


def take_dir(root: str, take: Mapping) -> str:
    """The folder of a takes.json entry: ROOT/{root_dir} (the downloader's takes/{take_name}), else
    ROOT/takes/{take_name}, else ROOT/takes/{take_uid} (trees arranged by uid); the first of them that exists,
    else ROOT/{root_dir} (or ROOT/takes/{take_name})."""
    candidates = [os.path.join(root, take[key]) for key in ("root_dir",) if take.get(key)]
    candidates += [os.path.join(root, "takes", str(take[key])) for key in ("take_name", "take_uid") if take.get(key)]
    return next((c for c in candidates if os.path.isdir(c)), candidates[0])


def aria_video_path(take_folder: str, aria: str = DEFAULT_ARIA, kind: str = "downscaled") -> str:
    """{take}/frame_aligned_videos[/downscaled/448]/{aria}_214-1.mp4 (``kind`` downscaled or full)."""
    return os.path.join(take_folder, VIDEO_KINDS[kind][0], f"{aria}_{ARIA_RGB_STREAM}.mp4")


def aria_device(take: Mapping, take_folder: Optional[str] = None) -> str:
    """The take's Aria device name (aria01, aria02, ...): the ego camera named "aria*" in takes.json's capture
    (as Ego-Exo4D's egopose tools find it), else the device the take folder's video or VRS files name, else aria01."""
    cameras = (take.get("capture") or {}).get("cameras") or []
    named = [str(c.get("cam_id")) for c in cameras if isinstance(c, Mapping) and str(c.get("cam_id", "")).lower()
             .startswith("aria") and str(c.get("is_ego", True)).lower() == "true"]
    videos = take.get("frame_aligned_videos")
    if len(named) > 1 and isinstance(videos, Mapping):
        named = [n for n in named if n in videos] or named
    if named:
        return sorted(named)[0]
    if take_folder and os.path.isdir(take_folder):
        patterns = [os.path.join(take_folder, folder, f"aria*_{ARIA_RGB_STREAM}.mp4") for folder, _ in
                    VIDEO_KINDS.values()] + [os.path.join(take_folder, f"aria*{suffix}") for suffix, _ in
                                             CALIBRATION_SOURCES]
        for pattern in patterns:
            found = sorted(glob.glob(pattern))
            if found:
                return os.path.basename(found[0]).split("_")[0].split(".")[0]
    return DEFAULT_ARIA


def find_aria_video(take_folder: str, aria: str, prefer: str = "downscaled") -> Optional[tuple[str, str]]:
    """(path, kind) of the take's Aria RGB video: the ``prefer`` kind (downscaled or full) when present, else the
    other; None when neither exists."""
    order = [prefer] + [kind for kind in VIDEO_KINDS if kind != prefer]
    for kind in order:
        path = aria_video_path(take_folder, aria, kind)
        if os.path.exists(path):
            return path, kind
    return None


def missing_video_message(root: str, take_folder: str, aria: str) -> str:
    paths = " nor ".join(aria_video_path(take_folder, aria, kind) for kind in VIDEO_KINDS)
    return (f"no Aria video: neither {paths} exists; download part {VIDEO_KINDS['downscaled'][1]} "
            f"({download_command(root, VIDEO_KINDS['downscaled'][1])}) or part {VIDEO_KINDS['full'][1]}")


def calibration_sources(take_folder: str, aria: str) -> list[str]:
    """The files a take's calibration may come from, in the order they are read."""
    return [os.path.join(take_folder, f"{aria}{suffix}") for suffix, _ in CALIBRATION_SOURCES]


# ---------------------------------------------------------------- processed paths
# ---------------------------------------------------------------- processed paths
def processed_frames_dir(processed_root: str, take_uid: str) -> str:
    return os.path.join(processed_root, take_uid, ARIA_STREAM)


def processed_frame_path(processed_root: str, take_uid: str, frame: int) -> str:
    return os.path.join(processed_frames_dir(processed_root, take_uid), f"frame_{frame}.jpg")


def pose_fragment_name(take_uid: str, first: int, last: int) -> str:
    return f"{take_uid}_{first}-{last}.json"


def parse_pose_fragment_name(name: str) -> Optional[tuple[str, int, int]]:
    """``{take_uid}_{first}-{last}.json`` -> (take_uid, first, last); None for any other name."""
    if not name.endswith(".json") or "_" not in name:
        return None
    take_uid, span = name[: -len(".json")].rsplit("_", 1)
    first, _, last = span.partition("-")
    if not (take_uid and first.isdigit() and last.isdigit()):
        return None
    return take_uid, int(first), int(last)


def list_pose_fragments(pose_split_dir: str) -> dict[str, list[str]]:
    """take_uid -> paths of its fragments, ordered by first frame."""
    takes: dict[str, list[tuple[int, str]]] = {}
    for name in sorted(os.listdir(pose_split_dir)):
        parsed = parse_pose_fragment_name(name)
        if parsed is not None:
            takes.setdefault(parsed[0], []).append((parsed[1], os.path.join(pose_split_dir, name)))
    return {uid: [p for _, p in sorted(frags)] for uid, frags in sorted(takes.items())}


# ---------------------------------------------------------------- raw readers
def read_json(path: str):
    """json.load with an error that names the file."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot read JSON ({err})") from err


def read_takes(root: str) -> list[dict]:
    """takes.json as a list of take dicts (each has at least take_uid and take_name).

    FileNotFoundError naming the part to download when there is none; ValueError when it cannot be used."""
    path = takes_json_path(root)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} missing (nor {os.path.join(root, LEGACY_TAKES_JSON)}): download part "
                                f"metadata ({download_command(root, 'metadata')})")
    takes = read_json(path)
    if not isinstance(takes, list) or not all(isinstance(t, dict) and "take_uid" in t for t in takes):
        raise ValueError(f"{path}: expected a list of {{take_uid, take_name, ...}} objects")
    return takes


def is_dropped_take(take_name: str) -> bool:
    return DROPPED_TAKE_KEYWORD in take_name.lower()


def aria_key(camera_pose: dict) -> Optional[str]:
    """The first key of a camera_pose JSON that contains "aria" (e.g. "aria01"), or None."""
    return next((k for k in camera_pose if "aria" in k.lower()), None)


def load_aria_calibration(take_folder: str, aria: str = DEFAULT_ARIA):
    """(the take's Aria RGB fisheye ``CameraCalibration``, the file it came from): the first of
    {aria}_noimagestreams.vrs, {aria}.vrs (read by projectaria-tools' VRS data provider) and the synthetic world's
    {aria}_device_calibration.json that exists.

    Raises FileNotFoundError naming the files and the parts to download when none exists, ValueError when the
    one found cannot be read.
    """
    from projectaria_tools.core import calibration

    sources = calibration_sources(take_folder, aria)
    source = next((path for path in sources if os.path.exists(path)), None)
    if source is None:
        vrs_parts = [part for _, part in CALIBRATION_SOURCES if part]
        raise FileNotFoundError(f"no calibration: none of {', '.join(sources)} exists; download part {vrs_parts[0]} "
                                f"(or {vrs_parts[1]})")
    if source.endswith(".vrs"):
        from projectaria_tools.core import data_provider

        try:
            provider = data_provider.create_vrs_data_provider(source)
            device = provider.get_device_calibration() if provider is not None else None
        except (OSError, RuntimeError, ValueError) as err:
            raise ValueError(f"{source}: cannot read the VRS calibration ({err})") from err
    else:
        try:
            with open(source) as f:
                device = calibration.device_calibration_from_json_string(f.read())
        except (OSError, RuntimeError, ValueError) as err:  # projectaria-tools raises RuntimeError on bad JSON
            raise ValueError(f"{source}: not a readable Aria device calibration ({err})") from err
    camera = device.get_camera_calib(ARIA_RGB_LABEL) if device is not None else None
    if camera is None:
        raise ValueError(f"{source}: no '{ARIA_RGB_LABEL}' camera calibration could be read")
    return camera, source


def fit_calibration_to_video(camera, width: int, height: int):
    """A calibration for frames of ``width`` x ``height`` px, and a note ('' when unchanged).

    Same aspect ratio: rescaled (a real Aria RGB calibration at 2880 px first goes through the canonical
    2880 -> 1408 transform, which is a crop plus a scale, not a plain scale). Another aspect: ValueError.
    """
    from projectaria_tools.core import calibration

    cal_w, cal_h = (int(v) for v in camera.get_image_size())
    if (cal_w, cal_h) == (width, height):
        return camera, ""
    note = f"calibration {cal_w}x{cal_h} px, video {width}x{height} px: rescaled"
    if camera.get_label() == ARIA_RGB_LABEL and (cal_w, cal_h) == (2880, 2880):
        camera = calibration.rescale_camera_calibration(
            camera, np.array([1408, 1408], np.int32), calibration.DeviceVersion.Gen1, ARIA_RGB_LABEL)
        cal_w, cal_h = 1408, 1408
        note += " (Aria 2880 -> 1408 canonical transform first)"
    if cal_w * height != cal_h * width:
        raise ValueError(f"calibration is {cal_w}x{cal_h} px but the video is {width}x{height} px: "
                         "different aspect ratios, cannot rescale")
    if (cal_w, cal_h) != (width, height):
        camera = camera.rescale(np.array([width, height], np.int32), width / cal_w)
    return camera, note


# ---------------------------------------------------------------- processed pose readers
@dataclass
class TakePoses:
    """The merged processed poses of one take. N frames, sorted."""

    take_uid: str
    frames: np.ndarray  # (N,) int64 video frame numbers
    pose: np.ndarray  # (N, 17, 3) float32, camera frame of each frame, missing joint = -1
    confidence: np.ndarray  # (N, 17) float32 flags, 1 annotated / 0 missing
    trajectory: np.ndarray  # (N, 3) float32, camera centre in world coordinates
    rotation: np.ndarray  # (N, 3, 3) float32 world->camera rotation; NaN for frames of fragments without one
    dropped: list[str] = field(default_factory=list)  # "file: frame F: reason" for frames left out


NO_ROTATION = np.full((3, 3), np.nan)  # what a frame of an older fragment (no "rotation" key) carries


def _frame_entry(entry) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One fragment frame -> (pose (17, 3), confidence (17,), trajectory (3,), rotation (3, 3), NaN when the
    fragment predates the key); ValueError says what is wrong."""
    if not isinstance(entry, dict):
        raise ValueError(f"expected an object, got {type(entry).__name__}")
    missing = [k for k in ("pose", "confidence", "trajectory") if k not in entry]
    if missing:
        raise ValueError(f"missing key(s) {missing}")
    try:
        pose = np.asarray(entry["pose"], np.float64)
        confidence = np.asarray(entry["confidence"], np.float64)
        trajectory = np.asarray(entry["trajectory"], np.float64)
        rotation = np.asarray(entry["rotation"], np.float64) if "rotation" in entry else None
    except (TypeError, ValueError) as err:
        raise ValueError(f"non-numeric values ({err})") from err
    checks = [("pose", pose, (NUM_JOINTS, 3)), ("confidence", confidence, (NUM_JOINTS,)),
              ("trajectory", trajectory, (3,))] + ([("rotation", rotation, (3, 3))] if rotation is not None else [])
    for name, arr, shape in checks:
        if arr.shape != shape:
            raise ValueError(f"'{name}' has shape {arr.shape}, expected {shape}")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"'{name}' holds NaN or inf")
    if rotation is not None and not is_rotation(rotation, tol=1e-3):
        raise ValueError("'rotation' is not a rotation matrix")
    return pose, confidence, trajectory, NO_ROTATION if rotation is None else rotation


def load_take_poses(fragment_paths: list[str]) -> TakePoses:
    """Reads one take's fragments and merges them into per-frame arrays.

    Overlapping frames must agree between fragments (1e-6). A frame with a missing key, a wrong shape, or NaN
    is left out and listed in ``dropped``; an unreadable fragment raises ValueError naming the file.
    """
    if not fragment_paths:
        raise ValueError("load_take_poses: no fragment files given")
    parsed = parse_pose_fragment_name(os.path.basename(fragment_paths[0]))
    if parsed is None:
        raise ValueError(f"{fragment_paths[0]}: not a pose fragment name "
                         "(expected {take_uid}_{first}-{last}.json)")
    take_uid = parsed[0]
    merged: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    dropped: list[str] = []
    for path in fragment_paths:
        content = read_json(path)
        if not isinstance(content, dict):
            raise ValueError(f"{path}: expected {{frame: {{pose, confidence, trajectory}}}}")
        for key, entry in content.items():
            if not str(key).isdigit():
                dropped.append(f"{path}: frame {key!r}: not a frame number")
                continue
            try:
                arrays = _frame_entry(entry)
            except ValueError as err:
                dropped.append(f"{path}: frame {key}: {err}")
                continue
            frame = int(key)
            if frame in merged and not all(np.allclose(a, b, atol=1e-6, equal_nan=True)
                                           for a, b in zip(merged[frame], arrays)):
                raise ValueError(f"{path}: frame {frame} differs from the same frame in an overlapping fragment")
            merged[frame] = arrays
    frames = np.array(sorted(merged), np.int64)
    stack = [np.stack([merged[f][i] for f in frames]).astype(np.float32) if len(frames) else
             np.zeros((0,) + shape, np.float32)
             for i, shape in enumerate(((NUM_JOINTS, 3), (NUM_JOINTS,), (3,), (3, 3)))]
    return TakePoses(take_uid, frames, *stack, dropped)


# ---------------------------------------------------------------- pose coordinate frames
# (what a loader can deliver: internlm.config.schema.POSE_FRAMES)


def camera_to_world(pose: np.ndarray, rotation: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """(N, J, 3) points in the camera frame of each of N frames, (N, 3, 3) world->camera R, (N, 3) camera
    centres c -> (N, J, 3) world points R^T p + c."""
    return np.einsum("nji,nkj->nki", rotation, pose) + centre[:, None, :]


def world_to_camera(points: np.ndarray, rotation: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """(N, J, 3) world points, one camera's (3, 3) world->camera R and (3,) centre c -> R (X - c)."""
    return np.einsum("ij,nkj->nki", rotation, points - centre)


def camera_centre(world_to_camera: np.ndarray) -> np.ndarray:
    """(3, 4) world->camera [R | t] -> (3,) camera centre in world coordinates, -R^T t."""
    rotation, translation = world_to_camera[:, :3], world_to_camera[:, 3]
    return -rotation.T @ translation


def is_rotation(matrix: np.ndarray, tol: float = 1e-4) -> bool:
    """True for a proper 3x3 rotation (orthonormal, det +1)."""
    return bool(np.allclose(matrix @ matrix.T, np.eye(3), atol=tol) and math.isclose(np.linalg.det(matrix), 1.0,
                                                                                    abs_tol=tol))


class ProblemLog:
    """Problems met while reading Ego-Exo4D files: each is printed when found (naming the file) and counted by
    kind for the summary, so nothing is left out silently."""

    def __init__(self, echo: bool = True):
        self.counts: Counter[str] = Counter()
        self.messages: list[str] = []
        self.echo = echo

    def add(self, kind: str, message: str, count: int = 1) -> None:
        self.counts[kind] += count
        self.messages.append(message)
        if self.echo:
            from tqdm import tqdm

            tqdm.write(f"WARNING: {message}", file=sys.stderr)

    def summary(self) -> str:
        return ", ".join(f"{kind}: {n}" for kind, n in sorted(self.counts.items())) or "none"
