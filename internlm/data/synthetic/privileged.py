"""PRIVILEGED, SYNTHETIC-ONLY: the simulator's ground truth of what is in view, per frame of every take.

Real data has nothing like it. It exists for one purpose: the motion evaluation's scene-oracle row (a pose-only
siMLPe that is also given these numbers; eval_3dposes.py --scene_oracle), the ceiling of what reading the scene
from the images could add to the pose-only baseline in this world. No model input or training path reads it.

Written next to the world, outside its Ego-Exo4D tree: ``{world}/privileged_scene_truth/{take_uid}.json`` =
{"privileged": true, "take_uid", "columns": SCENE_TRUTH_FEATURES, "frames": [F], "values": [[C] per frame]} (rounded
to 1e-4, deterministic bytes), the columns: what the walker acts on at each
frame (body.Motion.percept, its decisions in body._walk), in the walker's frame:
  clear_ahead / clear_left / clear_right   clearance (m, capped at CLEARANCE_CAP) of the walker's look-ahead point
                                           straight ahead and 0.9 rad to each side (below 0.8 ahead it turns away,
                                           to the freer side)
  landmark_in_front                        1 when a landmark is within 4.5 m and 1.3 rad of the walking direction
                                           (the nearest one draws the gaze part of the time), else 0
  landmark_bearing_sin / _cos              its bearing relative to the walking direction (0, 1 when none)
  landmark_gap                             the gap to it (m, capped at 4.5; within 1.6 m and 0.6 rad of the walking
                                           direction a reach may start)
"""

from __future__ import annotations

import json
import os

import numpy as np

from .body import ATTENTION_RANGE, Motion
from .writers import write_json

SCENE_TRUTH_DIR = "privileged_scene_truth"
SCENE_TRUTH_FEATURES = ("clear_ahead", "clear_left", "clear_right", "landmark_in_front", "landmark_bearing_sin",
                        "landmark_bearing_cos", "landmark_gap")
CLEARANCE_CAP = 4.0


def scene_truth(motion: Motion) -> np.ndarray:
    """(T, len(SCENE_TRUTH_FEATURES)) float32 from the walker's percept."""
    p = motion.percept  # (T, 5)
    in_front = np.isfinite(p[:, 3])
    bearing = np.where(in_front, p[:, 3], 0.0)
    return np.stack([np.minimum(p[:, 0], CLEARANCE_CAP), np.minimum(p[:, 1], CLEARANCE_CAP),
                     np.minimum(p[:, 2], CLEARANCE_CAP), in_front.astype(float),
                     np.where(in_front, np.sin(bearing), 0.0), np.where(in_front, np.cos(bearing), 1.0),
                     np.where(in_front, np.minimum(p[:, 4], ATTENTION_RANGE), ATTENTION_RANGE)],
                    axis=1).astype(np.float32)


def scene_truth_path(world_dir: str, take_uid: str) -> str:
    return os.path.join(world_dir, SCENE_TRUTH_DIR, f"{take_uid}.json")


def write_scene_truth(world_dir: str, take_uid: str, frames: np.ndarray, features: np.ndarray) -> None:
    """Atomically (writers.write_json: a temporary name, then renamed)."""
    write_json(scene_truth_path(world_dir, take_uid), {
        "privileged": True, "note": "synthetic-only simulator ground truth, for the motion evaluation's scene oracle",
        "take_uid": take_uid, "columns": list(SCENE_TRUTH_FEATURES), "frames": [int(f) for f in frames],
        "values": np.round(np.asarray(features, np.float64), 4).tolist()})


class SceneTruth:
    """Reads ``{world}/privileged_scene_truth/*.json``: ``at(take_uid, frame)`` -> (C,) float32."""

    def __init__(self, world_dir: str):
        self.world_dir = world_dir
        folder = os.path.join(world_dir, SCENE_TRUTH_DIR)
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"{folder}: no privileged scene truth here (written by the synthetic world's "
                                    "generator, dataset_preprocess/make_synthetic_egoworld.py, for its own worlds "
                                    "only; real data has none)")
        self._takes: dict[str, tuple[dict, np.ndarray]] = {}

    def _take(self, take_uid: str) -> tuple[dict, np.ndarray]:
        if take_uid not in self._takes:
            path = scene_truth_path(self.world_dir, take_uid)
            try:
                with open(path) as f:
                    content = json.load(f)
                columns, frames = tuple(content["columns"]), content["frames"]
                values = np.asarray(content["values"], np.float32).reshape(len(frames), len(columns))
            except (OSError, ValueError, KeyError, TypeError) as err:
                raise FileNotFoundError(f"{path}: the privileged scene truth of take {take_uid} is missing or "
                                        f"unreadable ({err})") from None
            if columns != SCENE_TRUTH_FEATURES:
                raise ValueError(f"{path}: columns {columns}, expected {SCENE_TRUTH_FEATURES} (regenerate the world)")
            self._takes[take_uid] = ({int(f): i for i, f in enumerate(frames)}, values)
        return self._takes[take_uid]

    def at(self, take_uid: str, frame: int) -> np.ndarray:
        rows, features = self._take(take_uid)
        if frame not in rows:
            raise KeyError(f"{scene_truth_path(self.world_dir, take_uid)}: no row for frame {frame}")
        return features[rows[frame]]
