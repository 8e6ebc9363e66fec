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
import torch
from torch.utils.data import DataLoader, Dataset

from ..config.schema import DataConfig
from .egoexo_clips import EgoExoClips, build_clip_index, index_egoexo_frames
from .generated import GeneratedSamples
from .image_folder import ImageFolderEval, ImageFolderIndex
from .pose_index import load_pose_index
from .sampler import EvalShardSampler, StepBatchSampler
from .transforms import IMAGENET_MEAN, IMAGENET_STD, MultiCropConfig, MultiCropTransform
from .walking_tours import FrameIndex, MultiCropFrames, index_walking_tours

logger = logging.getLogger("internlm.data")


def _split_dir(data_cfg: DataConfig, split: str) -> str:
    return os.path.join(data_cfg.egoexo_pose_folder, split)


def _check_frames_per_clip(data_cfg: DataConfig) -> None:
    if data_cfg.frames_per_clip != 1:
        raise ValueError(f"data.frames_per_clip={data_cfg.frames_per_clip}: stage-1 samples are single frames "
                         "(the authors' configs use 1); multi-frame samples are not built")


def build_stage1_frames(data_cfg: DataConfig) -> FrameIndex:
    """The frames of a WTVideos / WT1Video run: WalkingTours sources, plus Ego-Exo4D train frames if use_egoexo."""
    folders = data_cfg.folders("train")
    if data_cfg.dataset_type == "WT1Video" and len(folders) != 1:
        raise ValueError(f"data.dataset_type='WT1Video' needs exactly one data.train_folder entry, got {folders}")
    parts = [index_walking_tours(folders, data_cfg.step_between_clips)]
    if data_cfg.use_egoexo:
        parts.append(index_egoexo_frames(data_cfg.egoexo_frames_folder,
                                         _split_dir(data_cfg, data_cfg.egoexo_train_split)))
    index = FrameIndex.concat(parts, "stage-1 frames")
    for part in parts:
        part.report.log()
    logger.info("stage-1 frames: %d (%s)", len(index), ", ".join(f"{p.report.what}: {len(p)}" for p in parts))
    return index


def build_clip_dataset(data_cfg: DataConfig, split: str, train: bool, cache_dir: Optional[str] = None,
                       index_workers: Optional[int] = None) -> EgoExoClips:
    poses = load_pose_index(_split_dir(data_cfg, split), cache_dir=cache_dir, workers=index_workers)
    index = build_clip_index(poses, data_cfg.egoexo_frames_folder, data_cfg.clip_frames, data_cfg.clip_steps,
                             what=f"Ego-Exo4D clips ({split})")
    index.report.log()
    logger.info("Ego-Exo4D %s: %d clips from %d takes, %d pose frames", split, len(index),
                len(poses.take_uids), len(poses.frames))
    multicrop = MultiCropTransform(MultiCropConfig.from_data_config(data_cfg)) if train else None
    return EgoExoClips(index, data_cfg.egoexo_frames_folder, data_cfg.pred_img_size, data_cfg.norm_vid,
                       multicrop, data_cfg.seed, train)


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
    _check_frames_per_clip(data_cfg)
    transform = MultiCropTransform(MultiCropConfig.from_data_config(data_cfg))
    if kind in ("WTVideos", "WT1Video"):
        return MultiCropFrames(build_stage1_frames(data_cfg), transform, data_cfg.seed, kind)
    if kind == "ImgNetDINO":
        folders = data_cfg.folders("train")
        if len(folders) != 1:
            raise ValueError(f"data.dataset_type='ImgNetDINO' needs one ImageFolder root in data.train_folder, "
                             f"got {folders}")
        return MultiCropFrames(ImageFolderIndex(folders[0]), transform, data_cfg.seed, f"ImgNetDINO {folders[0]}")
    raise ValueError(f"data.dataset_type={kind!r}: expected WTVideos, WT1Video, ImgNetDINO, EgoExoClips or Generated")


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
    ``consumed`` (global samples consumed so far). Endless unless ``data.train_one_epoch``."""
    dataset = dataset if dataset is not None else build_train_dataset(data_cfg, cache_dir, joint=joint)
    sampler = StepBatchSampler(len(dataset), data_cfg.micro_num, rank, world_size, data_cfg.seed, start=consumed,
                               shuffle=True, one_epoch=data_cfg.train_one_epoch)
    workers = data_cfg.num_workers
    if workers > 0:
        _single_threaded_opencv()
    return DataLoader(
        dataset, batch_sampler=sampler, num_workers=workers, persistent_workers=workers > 0,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        prefetch_factor=prefetch_factor if workers > 0 else None,
    )


def build_eval_clip_dataset(data_cfg: DataConfig, split: Optional[str] = None,
                            cache_dir: Optional[str] = None) -> EgoExoClips:
    """Evaluation clips (retrieval and motion evals): no crops, no randomness, a fixed order; int keys."""
    return build_clip_dataset(data_cfg, split or data_cfg.egoexo_valid_split, False, cache_dir)


def build_eval_loader(dataset: Dataset, batch_size: int, rank: int = 0, world_size: int = 1,
                      num_workers: int = 0) -> DataLoader:
    """This rank's contiguous shard of ``dataset`` in order (gather by ``sample_id`` to restore the full order)."""
    sampler = EvalShardSampler(len(dataset), batch_size, rank, world_size)
    if num_workers > 0:
        _single_threaded_opencv()
    return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers)


def build_image_folder(root: str, resize: int = 256, crop: int = 224, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                       normalize: bool = True) -> ImageFolderEval:
    """kNN evaluation set: items (FloatTensor (3, crop, crop), class index); ``.classes``, ``.targets``."""
    return ImageFolderEval(root, resize, crop, mean, std, normalize)
