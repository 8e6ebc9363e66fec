"""How big a synthetic world is: the named presets and the per-option overrides of make_synthetic_egoworld.py."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class WorldSize:
    train_takes: int  # Ego-Exo4D-style takes per split (a bouldering take is added on top, in train)
    val_takes: int
    frames_per_take: int  # 30 fps
    video_size: int  # square fisheye video, px (the real data's folder is named 448 whatever this is)
    calibration_scale: int  # calibration resolution = video_size * this (real data: 1408 or 2880 vs 448 px)
    walks: int  # WalkingTours-style videos
    walk_frames: int
    walk_width: int  # pinhole, 16:9
    walk_height: int
    classes: int  # ImageFolder classes (at most the catalogue size)
    images_per_class: int  # train images per class
    val_images_per_class: int
    image_size: int  # ImageFolder images are square


PRESETS = {
    # unit tests: a few seconds
    "tiny": WorldSize(train_takes=3, val_takes=2, frames_per_take=120, video_size=64, calibration_scale=4,
                      walks=1, walk_frames=90, walk_width=96, walk_height=54,
                      classes=4, images_per_class=6, val_images_per_class=3, image_size=48),
    # quick demos
    "small": WorldSize(train_takes=6, val_takes=2, frames_per_take=200, video_size=96, calibration_scale=4,
                       walks=1, walk_frames=300, walk_width=128, walk_height=72,
                       classes=6, images_per_class=20, val_images_per_class=6, image_size=64),
    # the main job: at most ~60 s on 2 cores
    "default": WorldSize(train_takes=12, val_takes=3, frames_per_take=300, video_size=128, calibration_scale=4,
                         walks=2, walk_frames=600, walk_width=160, walk_height=90,
                         classes=8, images_per_class=40, val_images_per_class=60, image_size=96),
}


def resolve_size(preset: str, **overrides) -> WorldSize:
    """A preset with the options that are not None replaced; checks the values."""
    if preset not in PRESETS:
        raise ValueError(f"unknown size preset {preset!r}; expected one of {sorted(PRESETS)}")
    size = dataclasses.replace(PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None})
    for field in dataclasses.fields(size):
        value = getattr(size, field.name)
        minimum = 0 if field.name in ("walks", "val_takes", "val_images_per_class") else 1
        if value < minimum:
            raise ValueError(f"{field.name} must be >= {minimum}, got {value}")
    if size.frames_per_take < 30:
        raise ValueError(f"frames_per_take must be >= 30 (1 s of video), got {size.frames_per_take}")
    if size.video_size % 2 or size.walk_width % 2 or size.walk_height % 2:
        raise ValueError("video sizes must be even (mp4 encoders need even frame sizes)")
    return size
