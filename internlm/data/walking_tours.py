"""Stage 1: single frames (WalkingTours videos or frame folders, Ego-Exo4D frames, image folders) -> multi-crop.

A ``FrameIndex`` is a compact list of (source, frame number) pairs; a source is an mp4 or an image path
template. ``MultiCropFrames`` turns entry i of any such index into one DINO multi-crop sample.
"""

from __future__ import annotations

import json
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


@dataclass
class Sampling:
    """Which frames of a walk stage 1 reads: every ``step``-th video frame, or ``fps`` frames per second of video
    (the paper samples WalkingTours at 6 fps: every 5th frame of a 30 fps video, every 10th of a 60 fps one)."""

    step: int = 30
    fps: Optional[float] = None

    def stride(self, video_fps: Optional[float]) -> Optional[int]:
        """Video frames between two samples; None when ``fps`` is asked for and the video's is unknown."""
        if self.fps is None:
            return self.step
        if not video_fps or video_fps <= 0:
            return None
        return max(1, int(round(video_fps / self.fps)))


def index_walking_tours(paths: Sequence[str], sampling) -> FrameIndex:
    """The sampled frames of each mp4, folder of mp4s, or ``frame_%07d.jpg`` folder in ``paths``.

    The authors' layout (README): data/WTour/Walking_Tour_X.mp4, and its frames extracted next to it with
    ``ffmpeg -i Walking_Tour_X.mp4 Walking_Tour_X/frame_%07d.jpg`` (or extract_frames.py). A listed video whose
    frame folder is there is read from the frames (the same video frames, without decoding the video); a folder
    stands for its videos and its frame folders, each walk once. ``sampling``: a Sampling, or an int step."""
    if isinstance(sampling, int):
        sampling = Sampling(step=sampling)
    if sampling.step < 1 or (sampling.fps is not None and sampling.fps <= 0):
        raise ValueError(f"WalkingTours sampling {sampling}: the step must be >= 1 and the fps > 0")
    sources, ids, frames = [], [], []
    report = IndexReport("WalkingTours")
    for path in _expand_walk_folders(map(os.fspath, paths)):
        is_video = os.path.isfile(path) and path.lower().endswith(VIDEO_EXTENSIONS)
        frame_folder = os.path.splitext(path)[0] if is_video else path
        video_fps = None
        if is_video:
            try:
                count, _, _, video_fps = probe_video(path)
            except BadSampleError as err:
                report.add(err.reason, path)
                continue
            if not _frame_folder_covers(frame_folder, count, report):
                stride = sampling.stride(video_fps)
                if stride is None:
                    report.add("frame rate unknown (data.sample_fps needs it)", path)
                    continue
                sources.append(FrameSource(path, is_video=True))
                picked = np.arange(0, count, stride, dtype=np.int32)
                ids.append(np.full(len(picked), len(sources) - 1, np.int32))
                frames.append(picked)
                continue
        elif not os.path.isdir(path):
            report.add("missing, or neither a video file nor a frame folder", path)
            continue
        numbers, template = _list_frame_folder(frame_folder, report)
        if numbers is None:
            continue
        stride = sampling.stride(video_fps if is_video else _frame_folder_fps(frame_folder))
        if stride is None:
            report.add("frame rate unknown (data.sample_fps needs it: keep the video beside its frame folder, or "
                       "extract with extract_frames.py)", frame_folder)
            continue
        picked = _pick_frames(numbers, stride, frame_folder, report)
        sources.append(FrameSource(template, is_video=False))
        ids.append(np.full(len(picked), len(sources) - 1, np.int32))
        frames.append(picked)
    empty = [np.zeros(0, np.int32)]
    return FrameIndex(sources, np.concatenate(ids or empty), np.concatenate(frames or empty), report)


def _has_frames(folder: str) -> bool:
    return os.path.isdir(folder) and any(map(WT_FRAME_NAME.match, os.listdir(folder)))


def _expand_walk_folders(paths) -> list[str]:
    """A folder without frames of its own stands for its videos and the frame folders in it (name order), a frame
    folder whose video is also there only once (through the video, which then reads the frames)."""
    expanded = []
    for path in paths:
        if os.path.isdir(path) and not _has_frames(path):
            entries = sorted(os.listdir(path))
            videos = [e for e in entries if e.lower().endswith(VIDEO_EXTENSIONS)]
            stems = {os.path.splitext(v)[0] for v in videos}
            folders = [e for e in entries if e not in stems and _has_frames(os.path.join(path, e))]
            walks = sorted(videos + folders)
            if walks:
                expanded.extend(os.path.join(path, w) for w in walks)
                continue
        expanded.append(path)
    return expanded


def _frame_folder_covers(folder: str, video_frames: int, report: IndexReport) -> bool:
    """Whether a video's extracted frame folder is there and reaches (nearly) its last frame: then it is read
    instead of the video. A folder that stops early is reported, and the video read."""
    if not _has_frames(folder):
        return False
    last = max(int(m.group(1)) for m in map(WT_FRAME_NAME.match, os.listdir(folder)) if m)
    if last < 0.95 * video_frames:  # frame_%07d numbers video frames from 1
        report.add(f"frame folder stops at frame {last} of {video_frames}: the video is read instead", folder)
        return False
    return True


def _frame_folder_fps(folder: str) -> Optional[float]:
    """The video frame rate of a frame folder: extract_frames.py's completion marker records it."""
    try:
        with open(os.path.join(folder, ".done")) as f:
            return float(json.load(f)["fps"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _pick_frames(numbers: np.ndarray, stride: int, folder: str, report: IndexReport) -> np.ndarray:
    """Every ``stride``-th video frame among a folder's frame numbers (counted from its first), so that a folder
    extracted with --every N gives the frames a full extraction would; a stride that is no multiple of the folder's
    spacing takes every round(stride / spacing)-th file instead (reported)."""
    spacing = int(np.min(np.diff(numbers))) if len(numbers) > 1 else 1
    if stride % spacing:
        report.add(f"frames {spacing} apart cannot be sampled every {stride}: every "
                   f"{max(1, round(stride / spacing))}-th file taken", folder)
        return numbers[::max(1, round(stride / spacing))]
    return numbers[(numbers - numbers[0]) % stride == 0]


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
