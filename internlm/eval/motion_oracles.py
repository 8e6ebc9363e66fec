"""Privileged oracles of the motion evaluation: siMLPe (internlm/model/simlpe.py) also given, for each of its passes,
numbers that a perfect reader of the images could at best extract. Trained like the pose-only siMLPe on the training
clips only (tools/train_motion_baseline.py --oracle KIND); their margin over the pose-only siMLPe is the ceiling of
what that part of vision can add in this world. They are ceilings, never baselines: no model ever reads their input.

  scene   the simulator's ground truth of what is in view at the last input frame (frame 4), the same for every
          pass: the walker's look-ahead clearance ahead / left / right and the landmark in front (present, bearing,
          gap): internlm/data/synthetic/privileged.py. Synthetic worlds only (--scene_truth WORLD_DIR).
  view    where the head camera is when each predicted step's image is taken (frames 5, 10, 15: the images the
          protocol gives the model), in the poses' coordinate frame, from the extrinsics: the ego-motion those
          images show, read perfectly. Needs a pose frame other than "camera".
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from internlm.data.synthetic.privileged import SCENE_TRUTH_FEATURES

ORACLES = ("scene", "view")
CONDITION_DIMS = {"view": 12}  # rotation (9) + camera centre (3); "scene": len(SCENE_TRUTH_FEATURES)


def condition_dim(kind: str) -> int:
    if kind == "scene":
        return len(SCENE_TRUTH_FEATURES)
    if kind not in CONDITION_DIMS:
        raise ValueError(f"unknown motion oracle {kind!r}; expected one of {', '.join(ORACLES)}")
    return CONDITION_DIMS[kind]


def clip_condition(kind: str, dataset, i: int, passes: int, input_frames: int, step: int,
                   scene_truth=None) -> np.ndarray:
    """(passes, C) float32: the oracle's extra input for each pass over clip ``i`` of an EgoExoClips ``dataset``."""
    if kind == "scene":
        if scene_truth is None:
            raise ValueError("the scene oracle needs the world's privileged scene truth (--scene_truth WORLD_DIR)")
        take_uid, frame_ids = dataset.clip_meta(i)
        row = scene_truth.at(take_uid, int(frame_ids[0]) + input_frames - 1)
        return np.tile(row[None], (passes, 1)).astype(np.float32)
    if kind == "view":
        if dataset.pose_frame == "camera":
            raise ValueError("the view oracle needs poses in a frame other than each frame's own camera "
                             "(data.pose_frame='camera' puts every camera at the origin)")
        return dataset.clip_camera_poses(i)[input_frames + step * np.arange(passes)]
    raise ValueError(f"unknown motion oracle {kind!r}; expected one of {', '.join(ORACLES)}")


def batch_condition(kind: str, dataset, sample_ids, passes: int, input_frames: int, step: int,
                    scene_truth=None, device: Optional[torch.device] = None) -> torch.Tensor:
    """(B, passes, C) for the clips ``sample_ids``."""
    rows = [clip_condition(kind, dataset, int(i), passes, input_frames, step, scene_truth) for i in sample_ids]
    return torch.from_numpy(np.stack(rows)).to(device)
