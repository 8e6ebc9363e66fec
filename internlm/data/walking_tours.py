"""Stage 1: single frames (WalkingTours videos or frame folders, Ego-Exo4D frames, image folders) -> multi-crop.

A ``FrameIndex`` is a compact list of (source, frame number) pairs; a source is an mp4 or an image path
template. ``MultiCropFrames`` turns entry i of any such index into one DINO multi-crop sample.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Optional, Protocol, Sequence

import numpy as np
from torch.utils.data import Dataset

from .bad_samples import BadSampleError, IndexReport, KnownBadFiles
from .sampler import sample_rng
from .transforms import MultiCropTransform
from .video import VIDEO_EXTENSIONS, DecodedImage, VideoFrameReader, largest_reduction, probe_video, read_image

# WalkingTours frame folders (ffmpeg -i video.mp4 folder/frame_%07d.jpg) number frames from 1.
WT_FRAME_NAME = re.compile(r"^frame_(\d+)\.(jpg|jpeg|png)$")


class FrameLocator(Protocol):
    """What MultiCropFrames needs from an index of frames."""

    def __len__(self) -> int: ...

    def name(self, i: int) -> str: ...

    def load(self, i: int, reduction_for=None) -> DecodedImage: ...

    def image_files(self, i: int) -> list[str]: ...


@dataclass
class FrameSource:
    path: str  # an mp4, or an image path template with one "{}" for the frame number
    is_video: bool


class FrameIndex:
    """Entries (source id, frame number) in int32 arrays: compact and shared copy-on-write by workers."""

    def __init__(self, sources: Sequence[FrameSource], source_ids: np.ndarray, frames: np.ndarray,
                 report: Optional[IndexReport] = None):
        self.sources = list(sources)
        self.source_ids = np.asarray(source_ids, np.int32)  # (N,)
        self.frames = np.asarray(frames, np.int32)  # (N,)
        self.report = report if report is not None else IndexReport("frames")
        self._video = VideoFrameReader()

    @classmethod
    def concat(cls, parts: Sequence["FrameIndex"], what: str) -> "FrameIndex":
        sources, ids, frames, report = [], [], [], IndexReport(what)
        for part in parts:
            ids.append(part.source_ids + len(sources))
            sources.extend(part.sources)
            frames.append(part.frames)
            report.merge(part.report)
        empty = [np.zeros(0, np.int32)]
        return cls(sources, np.concatenate(ids or empty), np.concatenate(frames or empty), report)

    def __len__(self) -> int:
        return len(self.frames)

    def name(self, i: int) -> str:
        source = self.sources[self.source_ids[i]]
        frame = int(self.frames[i])
        return f"{source.path} frame {frame}" if source.is_video else source.path.format(frame)

    def load(self, i: int, reduction_for=None) -> DecodedImage:
        source = self.sources[self.source_ids[i]]
        frame = int(self.frames[i])
        if source.is_video:
            return self._video.read(source.path, frame)
        return read_image(source.path.format(frame), reduction_for)

    def image_files(self, i: int) -> list[str]:
        """The image file entry i reads; [] for a video frame (a decoding error names the whole video)."""
        source = self.sources[self.source_ids[i]]
        return [] if source.is_video else [source.path.format(int(self.frames[i]))]


def _escape(path: str) -> str:
    return path.replace("{", "{{").replace("}", "}}")


def index_walking_tours(paths: Sequence[str], step_between_clips: int) -> FrameIndex:
    """Every ``step_between_clips``-th frame of each mp4, folder of mp4s, or ``frame_%07d.jpg`` folder in ``paths``."""
    if step_between_clips < 1:
        raise ValueError(f"data.step_between_clips={step_between_clips} must be >= 1")
    sources, ids, frames = [], [], []
    report = IndexReport("WalkingTours")
    for path in _expand_video_folders(map(os.fspath, paths)):
        if os.path.isdir(path):
            numbers, template = _list_frame_folder(path, report)
            if numbers is None:
                continue
            sources.append(FrameSource(template, is_video=False))
            picked = numbers[::step_between_clips]
        elif os.path.isfile(path) and path.lower().endswith(VIDEO_EXTENSIONS):
            try:
                count = probe_video(path)[0]
            except BadSampleError as err:
                report.add(err.reason, path)
                continue
            sources.append(FrameSource(path, is_video=True))
            picked = np.arange(0, count, step_between_clips, dtype=np.int32)
        else:
            report.add("missing, or neither a video file nor a frame folder", path)
            continue
        ids.append(np.full(len(picked), len(sources) - 1, np.int32))
        frames.append(picked)
    empty = [np.zeros(0, np.int32)]
    return FrameIndex(sources, np.concatenate(ids or empty), np.concatenate(frames or empty), report)


def _expand_video_folders(paths) -> list[str]:
    """A folder holding mp4s (and no extracted frames) stands for its videos, in name order."""
    expanded = []
    for path in paths:
        if os.path.isdir(path) and not any(map(WT_FRAME_NAME.match, os.listdir(path))):
            videos = sorted(f for f in os.listdir(path) if f.lower().endswith(VIDEO_EXTENSIONS))
            if videos:
                expanded.extend(os.path.join(path, f) for f in videos)
                continue
        expanded.append(path)
    return expanded


def _list_frame_folder(folder: str, report: IndexReport):
    """Sorted frame numbers and the path template of a WalkingTours frame folder (None if it has no frames)."""
    matches = [m for m in map(WT_FRAME_NAME.match, os.listdir(folder)) if m]
    if not matches:
        report.add("no frame_NNNNNNN.jpg files", folder)
        return None, None
    first = min(matches, key=lambda m: int(m.group(1)))
    width, ext = len(first.group(1)), first.group(2)
    numbers = sorted(int(m.group(1)) for m in matches if len(m.group(1)) == width and m.group(2) == ext)
    if len(numbers) != len(matches):
        report.add(f"frame names not like frame_{'N' * width}.{ext}", folder, len(matches) - len(numbers))
    template = os.path.join(_escape(folder), f"frame_{{:0{width}d}}.{ext}")
    return np.asarray(numbers, np.int32), template


class MultiCropFrames(Dataset):
    """One frame -> {"global_crops": (2, 3, G, G), "local_crops": (n, 3, L, L), "sample_id", "num_skipped",
    "bad_files"}.

    Keys are (dataset_index, draw_id) from StepBatchSampler; a plain int i means (i, i).
    """

    def __init__(self, frames: FrameLocator, transform: MultiCropTransform, seed: int, what: str):
        if len(frames) == 0:
            raise ValueError(f"{what}: no frames to train on")
        self.frames, self.transform, self.seed, self.what = frames, transform, seed, what
        self.bad_files = KnownBadFiles(what)
        init_size = transform.cfg.init_crop_size
        # A JPEG may be decoded at 1/2..1/8 size when even the smallest init crop keeps its resolution.
        self._reduction_for = lambda hw: largest_reduction(transform.min_init_box_side(*hw), init_size)

    def __len__(self) -> int:
        return len(self.frames)

    def _load(self, i: int, draw_id: int) -> dict:
        image = self.frames.load(i, self._reduction_for)
        return self.transform(image.rgb, sample_rng(self.seed, draw_id), source_hw=image.source_hw)

    def __getitem__(self, key) -> dict:
        return self.bad_files.load_sample(self._load, key, len(self), self.seed, self.frames.image_files)
