"""Build the datasets and loaders the trainer and the eval scripts use, from the typed ``DataConfig``.

Stage 1 (WTVideos / WT1Video / ImgNetDINO) and stage 2 (EgoExoClips) training loaders yield, per optimizer
step, this rank's ``micro_num`` samples collated into one dict (see walking_tours.MultiCropFrames and
egoexo_clips.EgoExoClips for the keys and shapes).
"""

from __future__ import annotations

import logging
import os
from typing import Optional

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..config.schema import DataConfig
from ..initialize.signals import ignore_stop_signals
from .bad_samples import IndexReport
from .egoexo_clips import EgoExoClips, build_clip_index, index_egoexo_frames
from .generated import GeneratedSamples
from .image_folder import ImageFolderEval, ImageFolderIndex
from .pose_index import load_pose_index
from .sampler import EvalShardSampler, StepBatchSampler
from .transforms import IMAGENET_MEAN, IMAGENET_STD, MultiCropConfig, MultiCropTransform
from .video import VIDEO_EXTENSIONS
from .walking_tours import FrameIndex, MultiCropFrames, Sampling, index_walking_tours

logger = logging.getLogger("internlm.data")


def _split_dir(data_cfg: DataConfig, split: str) -> str:
    return os.path.join(data_cfg.egoexo_pose_folder, split)


def _existing(key: str, path: str) -> str:
    """A configured data root: a typo in one must stop the run, not train on what the others hold."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{key}: {path} does not exist")
    return path


def _require_samples(count: int, key: str, path: str, report: IndexReport) -> None:
    if count == 0:
        raise ValueError(f"{key}: {path} yields no samples ({report.summary() if report.total else 'nothing found'})")


def _egoexo_roots(data_cfg: DataConfig, split: str) -> tuple[str, str]:
    """(frames folder, pose folder of ``split``), both checked to exist."""
    return (_existing("data.egoexo_frames_folder", data_cfg.egoexo_frames_folder),
            _existing("data.egoexo_pose_folder", _split_dir(data_cfg, split)))


def build_stage1_frames(data_cfg: DataConfig, which: str = "train") -> FrameIndex:
    """The frames of a WTVideos / WT1Video run (``which``: train or valid): WalkingTours sources
    (data.train_folder / valid_folder), plus the Ego-Exo4D frames of that split if use_egoexo.

    Every configured root must exist and yield frames, except that a video file that cannot be opened is bad
    input: left out and reported, like a corrupt file inside a folder."""
    folders = data_cfg.folders(which)
    if data_cfg.dataset_type == "WT1Video" and len(folders) != 1:
        raise ValueError(f"data.dataset_type='WT1Video' needs exactly one data.{which}_folder entry, got {folders}")
    parts = []
    for folder in map(os.fspath, folders):
        part = index_walking_tours([_existing(f"data.{which}_folder", folder)],
                                   Sampling(data_cfg.frame_stride(joint=False), data_cfg.sample_fps))
        if not (os.path.isfile(folder) and folder.lower().endswith(VIDEO_EXTENSIONS)):
            _require_samples(len(part), f"data.{which}_folder", folder, part.report)
        parts.append(part)
    if data_cfg.use_egoexo:
        split = data_cfg.egoexo_train_split if which == "train" else data_cfg.egoexo_valid_split
        frames_folder, pose_dir = _egoexo_roots(data_cfg, split)
        part = index_egoexo_frames(frames_folder, pose_dir)
        _require_samples(len(part), "data.egoexo_frames_folder", f"{frames_folder} (the takes of {pose_dir})",
                         part.report)
        parts.append(part)
    index = FrameIndex.concat(parts, f"stage-1 {which} frames")
    for part in parts:
        part.report.log()
    logger.info("stage-1 frames: %d (%s)", len(index), ", ".join(f"{p.report.what}: {len(p)}" for p in parts))
    return index


def build_clip_dataset(data_cfg: DataConfig, split: str, train: bool, cache_dir: Optional[str] = None,
                       index_workers: Optional[int] = None, calibration: bool = False) -> EgoExoClips:
    """The clips of ``split``. With data.calibration_takes = N, the training split's last N takes are held out:
    calibration=False gives the other takes' clips, calibration=True those N takes' clips."""
    frames_folder, pose_dir = _egoexo_roots(data_cfg, split)
    poses = load_pose_index(pose_dir, cache_dir=cache_dir, workers=index_workers)
    index = build_clip_index(poses, frames_folder, data_cfg.clip_frames, data_cfg.clip_steps,
                             what=f"Ego-Exo4D clips ({split})", start_every=data_cfg.frame_stride(joint=True))
    _require_samples(len(index), "data.egoexo_frames_folder", f"{frames_folder} (with the poses of {pose_dir})",
                     index.report)
    index.report.log()
    held_out = data_cfg.calibration_takes if split == data_cfg.egoexo_train_split else 0
    if calibration and not held_out:
        raise ValueError(f"calibration clips come from data.egoexo_train_split={data_cfg.egoexo_train_split!r} with "
                         f"data.calibration_takes > 0 (split {split!r}, calibration_takes "
                         f"{data_cfg.calibration_takes})")
    what = split
    if held_out:
        index = index.split_takes(held_out)[1 if calibration else 0]
        what = f"{split}, {'the' if calibration else 'without the'} {held_out} calibration take(s)"
    logger.info("Ego-Exo4D %s: %d clips from %d takes, %d pose frames", what, len(index),
                len(np.unique(index.clip_takes)), len(poses.frames))
    multicrop = MultiCropTransform(MultiCropConfig.from_data_config(data_cfg)) if train else None
    return EgoExoClips(index, data_cfg.egoexo_frames_folder, data_cfg.pred_img_size, data_cfg.norm_vid,
                       multicrop, data_cfg.seed, train, data_cfg.pose_frame, data_cfg.camera_motion,
                       data_cfg.clip_color_change)


def pose_statistics(data_cfg: DataConfig, max_clips: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation (3, J) of the training clips' joint positions per axis and joint, over the
    visible joints of up to ``max_clips`` clips spread evenly over the split (in data.pose_frame): the
    statistics model.pose_normalization standardises the action input with."""
    dataset = build_clip_dataset(data_cfg, data_cfg.egoexo_train_split, train=False)
    picked = np.unique(np.linspace(0, len(dataset) - 1, min(max_clips, len(dataset))).round().astype(np.int64))
    xyz, visible = zip(*(dataset.clip_xyz(int(i)) for i in picked))
    xyz, visible = np.stack(xyz).astype(np.float64), np.stack(visible)[..., None]  # (n, 20, J, 3), (n, 20, J, 1)
    count = visible.sum(axis=(0, 1)).clip(min=1)  # (J, 1)
    mean = (xyz * visible).sum(axis=(0, 1)) / count  # (J, 3)
    std = np.sqrt((((xyz - mean) ** 2) * visible).sum(axis=(0, 1)) / count)
    logger.info("pose statistics of %d training clips (%s frame): mean |xyz| %.3f m, mean std %.3f m", len(picked),
                data_cfg.pose_frame, float(np.abs(mean).mean()), float(std.mean()))
    return torch.from_numpy(mean.T.copy()).float(), torch.from_numpy(std.T.copy()).float()


def build_train_dataset(data_cfg: DataConfig, cache_dir: Optional[str] = None,
                        index_workers: Optional[int] = None, joint: Optional[bool] = None) -> Dataset:
    """The training set of ``data_cfg.dataset_type``; items are keyed by (dataset_index, draw_id).

    ``joint`` (stage 2: clips with poses) is needed only by "Generated", whose samples take the stage's shapes."""
    kind = data_cfg.dataset_type
    if kind == "Generated":
        if joint is None:
            raise ValueError("data.dataset_type='Generated' needs the stage: build_train_dataset(..., joint=...)")
        return GeneratedSamples(data_cfg, joint)
    if kind == "EgoExoClips":
        return build_clip_dataset(data_cfg, data_cfg.egoexo_train_split, True, cache_dir, index_workers)
    return _stage1_dataset(data_cfg, "train")


def _stage1_dataset(data_cfg: DataConfig, which: str) -> Dataset:
    kind = data_cfg.dataset_type
    transform = MultiCropTransform(MultiCropConfig.from_data_config(data_cfg))
    if kind in ("WTVideos", "WT1Video"):
        return MultiCropFrames(build_stage1_frames(data_cfg, which), transform, data_cfg.seed, kind)
    if kind == "ImgNetDINO":
        folders = data_cfg.folders(which)
        if len(folders) != 1:
            raise ValueError(f"data.dataset_type='ImgNetDINO' needs one ImageFolder root in data.{which}_folder, "
                             f"got {folders}")
        root = _existing(f"data.{which}_folder", folders[0])
        return MultiCropFrames(ImageFolderIndex(root), transform, data_cfg.seed, f"ImgNetDINO {root}")
    raise ValueError(f"data.dataset_type={kind!r}: expected WTVideos, WT1Video, ImgNetDINO, EgoExoClips or Generated")


def build_valid_dataset(data_cfg: DataConfig, joint: bool, cache_dir: Optional[str] = None) -> Dataset:
    """The validation set of a training run: stage 1 the frames of data.valid_folder (with the Ego-Exo4D frames of
    data.egoexo_valid_split if use_egoexo), stage 2 the clips of egoexo_valid_split; with the training crops, drawn
    from a fixed generator per sample (int keys), so every validation sees the same crops."""
    if data_cfg.dataset_type == "Generated":
        return GeneratedSamples(data_cfg, joint, length=4 * data_cfg.valid_micro_num)
    if joint:
        return build_clip_dataset(data_cfg, data_cfg.egoexo_valid_split, True, cache_dir)
    return _stage1_dataset(data_cfg, "valid")


def build_valid_loader(data_cfg: DataConfig, rank: int, world_size: int, joint: bool,
                       dataset: Optional[Dataset] = None) -> DataLoader:
    """This rank's batches of data.valid_micro_num validation samples. Every rank gets the same number of full
    batches (the last len(dataset) mod (valid_micro_num x world_size) samples are left out), so that collectives
    inside the forward (FSDP2) stay in step. Used inside a training run: its workers ignore the stop signals like
    the training loader's (iterate it inside ``data.workers.running_loader``)."""
    dataset = dataset if dataset is not None else build_valid_dataset(data_cfg, joint)
    per_round = data_cfg.valid_micro_num * world_size
    used = len(dataset) // per_round * per_round
    if used == 0:
        raise ValueError(f"the validation set has {len(dataset)} samples, fewer than data.valid_micro_num="
                         f"{data_cfg.valid_micro_num} x {world_size} ranks")
    return build_eval_loader(dataset, data_cfg.valid_micro_num, rank, world_size, data_cfg.num_workers,
                             num_samples=used, worker_init_fn=ignore_stop_signals)


def _single_threaded_opencv() -> None:
    """One OpenCV thread per process when loader workers decode: the workers are the parallelism.

    Set in the parent before the workers fork, which inherit it: calling cv2.setNumThreads in a forked child
    whose parent had OpenCV worker threads deadlocks (its thread pool was copied without its threads).
    Torch's intra-op threads are set to 1 in workers by the DataLoader itself.
    """
    cv2.setNumThreads(1)


def build_train_loader(data_cfg: DataConfig, rank: int, world_size: int, consumed: int,
                       dataset: Optional[Dataset] = None, pin_memory: Optional[bool] = None,
                       prefetch_factor: int = 2, cache_dir: Optional[str] = None,
                       joint: Optional[bool] = None) -> DataLoader:
    """Batches of this rank's ``data.micro_num`` samples per optimizer step, continuing the global stream at
    ``consumed`` (global samples consumed so far). Endless unless ``data.train_one_epoch``. The workers ignore the
    stop signals: iterate it inside ``data.workers.running_loader``."""
    dataset = dataset if dataset is not None else build_train_dataset(data_cfg, cache_dir, joint=joint)
    sampler = StepBatchSampler(len(dataset), data_cfg.micro_num, rank, world_size, data_cfg.seed, start=consumed,
                               shuffle=True, one_epoch=data_cfg.train_one_epoch)
    workers = data_cfg.num_workers
    if workers > 0:
        _single_threaded_opencv()
    return DataLoader(
        dataset, batch_sampler=sampler, num_workers=workers, persistent_workers=workers > 0,
        worker_init_fn=ignore_stop_signals if workers > 0 else None,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        prefetch_factor=prefetch_factor if workers > 0 else None,
    )


def build_eval_clip_dataset(data_cfg: DataConfig, split: Optional[str] = None,
                            cache_dir: Optional[str] = None) -> EgoExoClips:
    """Evaluation clips (retrieval and motion evals): no crops, no randomness, a fixed order; int keys."""
    return build_clip_dataset(data_cfg, split or data_cfg.egoexo_valid_split, False, cache_dir)


def build_eval_loader(dataset: Dataset, batch_size: int, rank: int = 0, world_size: int = 1,
                      num_workers: int = 0, num_samples: Optional[int] = None, worker_init_fn=None) -> DataLoader:
    """This rank's contiguous shard of ``dataset`` (its first ``num_samples``) in order (gather by ``sample_id`` to
    restore the full order)."""
    sampler = EvalShardSampler(len(dataset) if num_samples is None else num_samples, batch_size, rank, world_size)
    if num_workers > 0:
        _single_threaded_opencv()
    return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers,
                      worker_init_fn=worker_init_fn if num_workers > 0 else None)


def build_image_folder(root: str, resize: int = 256, crop: int = 224, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                       normalize: bool = True) -> ImageFolderEval:
    """kNN evaluation set: items (FloatTensor (3, crop, crop), class index); ``.classes``, ``.targets``."""
    return ImageFolderEval(root, resize, crop, mean, std, normalize)
