"""Writing the synthetic world's files: deterministic JSON, mp4 video, JPEG; each written to a temporary name
first and renamed, so an interrupted run never leaves a half-written file under the final name."""

from __future__ import annotations

import json
import os
from typing import Iterable

import cv2
import numpy as np

JPEG_QUALITY = 95


def _tmp(path: str) -> str:
    root, ext = os.path.splitext(path)
    return f"{root}.partial{ext}"  # keeps the extension: OpenCV picks the container from it


def write_json(path: str, content, indent=None) -> None:
    """Same content -> same bytes (keys keep their insertion order; floats are rounded by the caller)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = _tmp(path)
    # json.dumps (not json.dump) uses the C encoder: several times faster on the big annotation files
    text = json.dumps(content, indent=indent, separators=(",", ": ") if indent else (",", ":"))
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_mp4(path: str, frames_rgb: Iterable[np.ndarray], fps: float, width: int, height: int) -> int:
    """Encodes (H, W, 3) uint8 RGB frames as MPEG-4 part 2 ('mp4v'); returns the number of frames."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = _tmp(path)
    writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"{path}: OpenCV cannot open an mp4v video writer (is FFmpeg support built in?)")
    count = 0
    try:
        for frame in frames_rgb:
            if frame.shape != (height, width, 3):
                raise ValueError(f"{path}: frame {count} has shape {frame.shape}, expected {(height, width, 3)}")
            writer.write(np.ascontiguousarray(frame[:, :, ::-1]))
            count += 1
    finally:
        writer.release()
    os.replace(tmp, path)
    return count


def write_jpeg(path: str, image_rgb: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = _tmp(path)
    if not cv2.imwrite(tmp, image_rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
        raise RuntimeError(f"{path}: OpenCV could not write the JPEG")
    os.replace(tmp, path)
