"""Stage 2: Ego-Exo4D clips of 20 annotated frames (4 steps of 5), and the Ego-Exo4D frames of stage 1.

A clip starts at a frame that is a multiple of 5 (images exist for every 5th frame only), has all 20 pose
frames (the take's fragments merged), and has the image of each step (the step's first frame) on disk.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from ..config.schema import POSE_FRAMES
from ..model.reprojection import STILL_STEP
from .bad_samples import IndexReport, KnownBadFiles
from .egoexo_format import (
    DONE_MARKER,
    FRAME_STEP,
    MISSING_JOINT_VALUE,
    camera_to_world,
    processed_frame_path,
    processed_frames_dir,
    world_to_camera,
)
from .pose_index import PoseIndex, list_fragments
from .sampler import sample_rng
from .transforms import MultiCropTransform, Normalizer, clip_color_change, resize_square
from .video import largest_reduction, read_image
from .walking_tours import FrameIndex, FrameSource

# processed_data/{take_uid}/aria01_214-1/frame_{i}.jpg (undistorted, every 5th frame)
FRAME_FILE = re.compile(r"^frame_(\d+)\.jpg$")
IMAGE_EVERY = FRAME_STEP


def _keys(takes: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """(take, frame) pairs as single int64 keys, for np.isin."""
    return takes.astype(np.int64) << 32 | frames.astype(np.int64)


def list_take_frames(frames_folder: str, take_uid: str) -> Optional[np.ndarray]:
    """Sorted frame numbers with an image, int32 (M,); None when the take has no frames folder."""
    folder = processed_frames_dir(frames_folder, take_uid)
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return None
    return np.array(sorted(int(m.group(1)) for m in map(FRAME_FILE.match, names) if m), np.int32)


def list_frames_of_takes(frames_folder: str, take_uids, threads: int = 16) -> list[Optional[np.ndarray]]:
    """list_take_frames for many takes (threads: directory listing waits on the file system)."""
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(lambda uid: list_take_frames(frames_folder, uid), take_uids))


def index_egoexo_frames(frames_folder: str, pose_split_dir: str) -> FrameIndex:
    """Stage 1 with use_egoexo: every processed frame of the takes that have poses in ``pose_split_dir``."""
    take_uids = list(list_fragments(pose_split_dir))
    report = IndexReport(f"Ego-Exo4D frames of {pose_split_dir}")
    sources, ids, frames = [], [], []
    for uid, numbers in zip(take_uids, list_frames_of_takes(frames_folder, take_uids)):
        if numbers is None or len(numbers) == 0:
            report.add("take without processed frames", processed_frames_dir(frames_folder, uid))
            continue
        template = processed_frames_dir(frames_folder, uid).replace("{", "{{").replace("}", "}}")
        sources.append(FrameSource(os.path.join(template, "frame_{}.jpg"), is_video=False))
        ids.append(np.full(len(numbers), len(sources) - 1, np.int32))
        frames.append(numbers)
    empty = [np.zeros(0, np.int32)]
    return FrameIndex(sources, np.concatenate(ids or empty), np.concatenate(frames or empty), report)


@dataclass
class ClipIndex:
    poses: PoseIndex
    clip_rows: np.ndarray  # (C,) int64: the first pose row of each clip
    clip_takes: np.ndarray  # (C,) int32
    clip_frames: int
    clip_steps: int
    report: IndexReport

    def __len__(self) -> int:
        return len(self.clip_rows)

    @property
    def steps_per_clip(self) -> int:
        return self.clip_frames // self.clip_steps

    def split_takes(self, n_last: int) -> tuple["ClipIndex", "ClipIndex"]:
        """(the clips of every take but the last ``n_last``, the clips of those), takes in uid order among the takes
        that have clips: data.calibration_takes."""
        with_clips = np.unique(self.clip_takes)
        if not 0 < n_last < len(with_clips):
            raise ValueError(f"data.calibration_takes={n_last}: the split has {len(with_clips)} takes with clips; "
                             "at least one must stay for training")
        uids = np.asarray(self.poses.take_uids, dtype=object)
        held = with_clips[np.argsort(uids[with_clips].astype(str), kind="stable")[-n_last:]]
        mask = np.isin(self.clip_takes, held)
        return (dataclasses.replace(self, clip_rows=self.clip_rows[~mask], clip_takes=self.clip_takes[~mask]),
                dataclasses.replace(self, clip_rows=self.clip_rows[mask], clip_takes=self.clip_takes[mask]))


def build_clip_index(poses: PoseIndex, frames_folder: str, clip_frames: int = 20, clip_steps: int = 4,
                     what: str = "Ego-Exo4D clips", start_every: int = IMAGE_EVERY) -> ClipIndex:
    """All valid windows starting at a frame that is a multiple of ``start_every`` (data.step_between_clips, a
    multiple of IMAGE_EVERY), vectorised over the F pose rows (1.4M clips from 9.5M rows in seconds)."""
    step = clip_frames // clip_steps
    if clip_frames % clip_steps or step % IMAGE_EVERY or start_every % IMAGE_EVERY:
        raise ValueError(f"clip_frames={clip_frames} / clip_steps={clip_steps}, step_between_clips={start_every}: "
                         f"steps and clip starts must be multiples of {IMAGE_EVERY} frames (images exist for every "
                         f"{IMAGE_EVERY}th frame)")
    report = IndexReport(what)
    report.merge(poses.report)
    frames, take_of_row = np.asarray(poses.frames), poses.take_of_row
    starts = np.arange(max(0, len(frames) - clip_frames + 1))
    last = starts + clip_frames - 1
    # rows are unique sorted frames per take, so 20 rows of one take spanning 19 frames are consecutive
    ok = (take_of_row[starts] == take_of_row[last]) & (frames[last] - frames[starts] == clip_frames - 1)
    ok &= frames[starts] % start_every == 0
    starts = starts[ok]
    takes = take_of_row[starts]

    # The image of every step must exist: compare (take, frame) keys with the listed files.
    listed = list_frames_of_takes(frames_folder, poses.take_uids)
    take_has_folder = np.array([f is not None for f in listed], bool)  # (K,)
    for k in np.unique(takes[~take_has_folder[takes]]):
        report.add("take without frames folder", processed_frames_dir(frames_folder, poses.take_uids[k]))
    have = np.concatenate([_keys(np.full(len(f), k), f) for k, f in enumerate(listed) if f is not None]
                          or [np.zeros(0, np.int64)])
    step_frames = frames[starts][:, None] + step * np.arange(clip_steps)[None, :]  # (C, T)
    found = np.isin(_keys(np.repeat(takes[:, None], clip_steps, 1), step_frames), have)  # (C, T)
    missing_c, missing_t = np.nonzero(~found & take_has_folder[takes][:, None])
    missing_keys, first = np.unique(_keys(takes[missing_c], step_frames[missing_c, missing_t]), return_index=True)
    if len(missing_keys):
        examples = [processed_frame_path(frames_folder, poses.take_uids[takes[c]], step_frames[c, t])
                    for c, t in zip(missing_c[first[:3]], missing_t[first[:3]])]
        report.add("missing frame file", ", ".join(examples), n=len(missing_keys))
    keep = found.all(axis=1)
    return ClipIndex(poses, starts[keep].astype(np.int64), takes[keep].astype(np.int32), clip_frames, clip_steps,
                     report)


class EgoExoClips(Dataset):
    """Clip i -> {"frames": (T, 3, P, P), "poses": (T, 4, 5, 17), "take_uid", "frame_ids": (T,), "sample_id",
    "num_skipped", "bad_files"} and, when training, the multi-crop of one step's full-resolution frame ("global_crops",
    "local_crops"; the step is drawn from the sample's generator) and with ``clip_color_change`` the student's copy
    of the frames under one colour change ("student_frames", transforms.clip_color_change). Evaluation
    (train=False): no crops, no randomness; keys are plain ints. Poses are in ``pose_frame``
    (config.schema.POSE_FRAMES)."""

    def __init__(self, index: ClipIndex, frames_folder: str, pred_img_size: int, normalize: bool,
                 multicrop: Optional[MultiCropTransform], seed: int, train: bool, pose_frame: str = "camera",
                 camera_motion: bool = False, clip_color_change: bool = False):
        if len(index) == 0:
            raise ValueError(f"{index.report.what}: no valid clips ({index.report.summary()})")
        if train and multicrop is None:
            raise ValueError("EgoExoClips(train=True) needs the multi-crop transform")
        if pose_frame not in POSE_FRAMES:
            raise ValueError(f"data.pose_frame={pose_frame!r}: expected one of {', '.join(POSE_FRAMES)}")
        if pose_frame != "camera" or camera_motion:
            rows = index.poses.rotation[index.clip_rows] if len(index) else np.zeros((0, 3, 3))
            if np.isnan(rows).any():
                what = "data.camera_motion=True" if camera_motion else f"data.pose_frame={pose_frame!r}"
                raise ValueError(f"{what} needs each pose frame's camera rotation, which "
                                 f"the pose fragments of {index.report.what} lack (written by an older "
                                 "preprocess_egoexo_body_pose.py): rerun it"
                                 + ("" if camera_motion else ", or use data.pose_frame='camera'"))
        self.index, self.frames_folder, self.pred_img_size = index, frames_folder, pred_img_size
        self.normalizer, self.multicrop, self.seed, self.train = Normalizer(normalize), multicrop, seed, train
        self.pose_frame, self.camera_motion, self.clip_color_change = pose_frame, camera_motion, clip_color_change
        self._focal: dict[str, float] = {}  # take -> focal length (px) at pred_img_size
        if camera_motion:  # every take's marker now, not a failed sample hours into a run
            for take in np.unique(index.clip_takes):
                self.focal_length(str(index.poses.take_uids[take]))
        self.what = index.report.what
        self.bad_files = KnownBadFiles(self.what)

    def __len__(self) -> int:
        return len(self.index)

    def clip_meta(self, i: int) -> tuple[str, np.ndarray]:
        """(take_uid, frame number of each step's image (T,)) without loading anything."""
        idx = self.index
        row = int(idx.clip_rows[i])
        frame_ids = np.asarray(idx.poses.frames[row:row + idx.clip_frames:idx.steps_per_clip], np.int64)
        return str(idx.poses.take_uids[idx.clip_takes[i]]), frame_ids

    def _reference_row(self, i: int) -> Optional[int]:
        """The pose row whose camera is the coordinate frame of clip i's poses; None for "world" ("camera": each
        frame's own, no single row)."""
        idx, p = self.index, self.index.poses
        return {"clip_first_camera": int(idx.clip_rows[i]),
                "take_first_camera": int(p.take_offsets[idx.clip_takes[i]])}.get(self.pose_frame)

    def _extrinsics(self, i: int, rows) -> tuple[np.ndarray, np.ndarray]:
        """(world->camera rotations (n, 3, 3), camera centres in world (n, 3)) float64 of pose ``rows``."""
        p = self.index.poses
        rot, centre = np.asarray(p.rotation[rows], np.float64), np.asarray(p.trajectory[rows], np.float64)
        if np.isnan(rot).any():
            raise ValueError(f"take {p.take_uids[self.index.clip_takes[i]]}: a pose frame without its camera "
                             "rotation (pose fragments written by an older preprocess_egoexo_body_pose.py: rerun it)")
        return rot, centre

    def clip_xyz(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(20, 17, 3) float32 joints of clip i in ``pose_frame`` (missing joints -1) and (20, 17) visibility."""
        idx, p = self.index, self.index.poses
        row = int(idx.clip_rows[i])
        rows = slice(row, row + idx.clip_frames)
        xyz, vis = np.array(p.poses[rows], np.float64), np.array(p.visible[rows], np.float32)
        if self.pose_frame != "camera":
            xyz = camera_to_world(xyz, *self._extrinsics(i, rows))
            ref = self._reference_row(i)
            if ref is not None:
                xyz = world_to_camera(xyz, *(a[0] for a in self._extrinsics(i, [ref])))
            xyz = np.where(vis[..., None] > 0, xyz, MISSING_JOINT_VALUE)
        return xyz.astype(np.float32), vis

    def clip_camera_poses(self, i: int) -> np.ndarray:
        """(20, 12) float32: where the head camera is at each frame of clip i, in the coordinate frame of its poses
        (``pose_frame``): the rotation from camera to pose coordinates (row-major) and the camera centre (metres).
        In "camera" every frame is its own frame (identity, 0)."""
        idx = self.index
        row = int(idx.clip_rows[i])
        if self.pose_frame == "camera":
            return np.tile(np.array([STILL_STEP], np.float32), (idx.clip_frames, 1))
        rot, centre = self._extrinsics(i, slice(row, row + idx.clip_frames))
        to_pose, centre = rot.transpose(0, 2, 1), centre  # camera -> world
        ref = self._reference_row(i)
        if ref is not None:
            r0, c0 = (a[0] for a in self._extrinsics(i, [ref]))
            to_pose, centre = r0 @ to_pose, (centre - c0) @ r0.T
        return np.concatenate([to_pose.reshape(-1, 9), centre], axis=1).astype(np.float32)

    def step_camera_motion(self, i: int) -> np.ndarray:
        """(T-1, 12) float32: how the camera moves from the image of step t to that of step t+1, from the pose
        fragments' extrinsics: the rotation R_{t+1} R_t^T (camera-t coordinates -> camera-(t+1) coordinates,
        row-major) and the displacement R_t (c_{t+1} - c_t) of the camera centre in camera-t coordinates (metres).
        What frame t+1 shows is frame t seen through this motion (plus what comes into view)."""
        idx = self.index
        rot, centre = self._extrinsics(i, int(idx.clip_rows[i]) + idx.steps_per_clip * np.arange(idx.clip_steps))
        relative = rot[1:] @ rot[:-1].transpose(0, 2, 1)  # (T-1, 3, 3)
        shift = np.einsum("tij,tj->ti", rot[:-1], centre[1:] - centre[:-1])  # (T-1, 3)
        return np.concatenate([relative.reshape(-1, 9), shift], axis=1).astype(np.float32)

    def clip_camera_motion(self, i: int) -> np.ndarray:
        """(T, 12) float32: step_camera_motion for steps 0..T-2, and no motion (identity, zero) for the last step,
        whose next image is outside the clip (nothing is predicted from it)."""
        return np.concatenate([self.step_camera_motion(i), np.array([STILL_STEP], np.float32)], axis=0)

    def focal_length(self, take_uid: str) -> float:
        """The pinhole focal length (px) of the take's undistorted frames at pred_img_size, from the completion
        marker undistort_egovideos.py writes (its "focal" at its "size")."""
        if take_uid not in self._focal:
            marker = os.path.join(processed_frames_dir(self.frames_folder, take_uid), DONE_MARKER)
            try:
                with open(marker) as f:
                    meta = json.load(f)
                focal, size = float(meta["focal"]), float(meta["size"])
            except (OSError, ValueError, KeyError, TypeError) as err:
                raise ValueError(f"{marker}: data.camera_motion=True needs the focal length of the undistorted "
                                 f"frames, read from this marker ('focal' and 'size', written by "
                                 f"undistort_egovideos.py): {err}") from None
            self._focal[take_uid] = focal * self.pred_img_size / size
        return self._focal[take_uid]

    def clip_poses(self, i: int) -> torch.Tensor:
        """(T, 4, 5, 17): x, y, z (missing joints -1) and visibility, per step, frame and joint."""
        idx = self.index
        t, s = idx.clip_steps, idx.steps_per_clip
        xyz, vis = (torch.from_numpy(a) for a in self.clip_xyz(i))  # (20, 17, 3), (20, 17)
        xyz = xyz.reshape(t, s, -1, 3).permute(0, 3, 1, 2)  # (T, 3, 5, 17)
        return torch.cat([xyz, vis.reshape(t, 1, s, -1)], dim=1).contiguous()

    def _load(self, i: int, draw_id: Optional[int]) -> dict:
        take_uid, frame_ids = self.clip_meta(i)
        size = self.pred_img_size
        rng = sample_rng(self.seed, draw_id) if self.train else None
        crop_step = int(rng.integers(len(frame_ids))) if self.train else -1
        frames = torch.empty((len(frame_ids), 3, size, size), dtype=torch.float32)
        sample = {}
        for t, frame in enumerate(frame_ids):
            if t == crop_step:
                mc = self.multicrop
                reduce = lambda hw, mc=mc: largest_reduction(mc.min_init_box_side(*hw), mc.cfg.init_crop_size)  # noqa: E731
            else:
                reduce = lambda hw: largest_reduction(min(hw), size)  # noqa: E731
            image = read_image(processed_frame_path(self.frames_folder, take_uid, int(frame)), reduce)
            frames[t] = resize_square(image.rgb, size, self.normalizer)
            if t == crop_step:
                sample.update(self.multicrop(image.rgb, rng, source_hw=image.source_hw))
        if self.camera_motion:
            sample.update(camera_motion=torch.from_numpy(self.clip_camera_motion(i)),
                          focal=torch.tensor(self.focal_length(take_uid), dtype=torch.float32))
        sample.update(frames=frames, poses=self.clip_poses(i), take_uid=take_uid,
                      frame_ids=torch.from_numpy(frame_ids))
        if self.train and self.clip_color_change:  # drawn last: the draws above stay those of a run without it
            sample["student_frames"] = clip_color_change(frames, rng)
        return sample

    def image_files(self, i: int) -> list[str]:
        take_uid, frame_ids = self.clip_meta(i)
        return [processed_frame_path(self.frames_folder, take_uid, int(frame)) for frame in frame_ids]

    def __getitem__(self, key) -> dict:
        return self.bad_files.load_sample(self._load, key, len(self), self.seed, self.image_files)
