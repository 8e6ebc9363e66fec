"""Frame decoding with OpenCV: JPEG/PNG files (optionally at a reduced size) and mp4 frames by number.

Every failure raises ``BadSampleError`` naming the file; nothing here returns a blank frame. Decoders hold
no state shared between processes: ``VideoFrameReader`` opens captures lazily in the process that reads and
drops them when it finds itself in a new (forked) process.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Optional

import cv2
import numpy as np

from .bad_samples import BadSampleError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".avi", ".webm")

# libjpeg's DCT-domain downscaling: decode at 1/2, 1/4, 1/8 size for a fraction of the cost.
_REDUCED_FLAGS = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
                  8: cv2.IMREAD_REDUCED_COLOR_8}
# PIL (and so torchvision's ImageFolder) ignores EXIF orientation; so do we.
_DECODE_FLAGS_EXTRA = cv2.IMREAD_IGNORE_ORIENTATION
# SOF markers carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) are not SOFs.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def jpeg_size(buf: np.ndarray) -> Optional[tuple[int, int]]:
    """(height, width) from a JPEG's SOF header, or None when ``buf`` (uint8 file bytes) is not a parsable JPEG."""
    data = buf.tobytes() if len(buf) < 65536 else buf[:65536].tobytes()  # the header is in the first KBs
    if data[:2] != b"\xff\xd8":
        return None
    pos = 2
    while pos + 9 < len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker in _SOF_MARKERS:
            return int.from_bytes(data[pos + 5:pos + 7], "big"), int.from_bytes(data[pos + 7:pos + 9], "big")
        pos += 2 + length
    return None


def largest_reduction(source_px: float, target_px: int) -> int:
    """The largest JPEG reduction (1, 2, 4, 8) that still leaves >= ``target_px`` decoded pixels where the
    output needs them: ``source_px`` source pixels (the smallest region) become ``target_px`` output pixels."""
    for factor in (8, 4, 2):
        if source_px / factor >= target_px:
            return factor
    return 1


class DecodedImage:
    """A decoded RGB frame and the size of its source (they differ after a reduced JPEG decode)."""

    __slots__ = ("rgb", "source_hw")

    def __init__(self, rgb: np.ndarray, source_hw: tuple[int, int]):
        self.rgb = rgb  # uint8 (h, w, 3)
        self.source_hw = source_hw


def read_image(path: str, reduction_for=None) -> DecodedImage:
    """Decode an image file to RGB. ``reduction_for(source_hw) -> 1|2|4|8`` picks a reduced JPEG decode.

    Raises BadSampleError for a missing, unreadable, undecodable or truncated file.
    """
    try:
        buf = np.fromfile(path, dtype=np.uint8)
    except OSError as err:
        raise BadSampleError(path, f"cannot read ({err.strerror or err})") from None
    if buf.size == 0:
        raise BadSampleError(path, "empty file")
    reduction, source_hw = 1, None
    is_jpeg = buf[:2].tobytes() == b"\xff\xd8"
    if is_jpeg:
        # A truncated JPEG decodes "successfully" with a grey bottom: require the end-of-image marker.
        if b"\xff\xd9" not in buf[-64:].tobytes():
            raise BadSampleError(path, "truncated JPEG (no end-of-image marker)")
        source_hw = jpeg_size(buf)
        if source_hw is not None and reduction_for is not None:
            reduction = reduction_for(source_hw)
    bgr = cv2.imdecode(buf, _REDUCED_FLAGS[reduction] | _DECODE_FLAGS_EXTRA)
    if bgr is None or bgr.ndim != 3 or bgr.shape[0] == 0:
        raise BadSampleError(path, "cannot decode image")
    if source_hw is None:
        source_hw = bgr.shape[:2]
    return DecodedImage(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), source_hw)


def probe_video(path: str) -> tuple[int, int, int, float]:
    """(frame count, height, width, fps) from the container header. Raises BadSampleError if it cannot open."""
    cap = cv2.VideoCapture(path)
    try:
        if not cap.isOpened():
            raise BadSampleError(path, "cannot open video")
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        height, width = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)), int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        fps = float(cap.get(cv2.CAP_PROP_FPS))
    finally:
        cap.release()
    if count <= 0 or height <= 0 or width <= 0:
        raise BadSampleError(path, f"video header reports {count} frames of {width}x{height}")
    return count, height, width, fps


_INHERITED_CAPTURES: list = []  # captures a forked process got from its parent (see VideoFrameReader._capture)


class VideoFrameReader:
    """Reads frame ``i`` of an mp4. Keeps up to ``max_open`` captures per process (LRU).

    Reading forward by less than ``max_forward_skip`` frames decodes through instead of seeking (a seek
    decodes from the previous keyframe anyway). Seek and read-through give identical frames (tested).
    """

    def __init__(self, max_open: int = 4, max_forward_skip: int = 64):
        self.max_open = max_open
        self.max_forward_skip = max_forward_skip
        self._pid = os.getpid()
        self._captures: "OrderedDict[str, list]" = OrderedDict()  # path -> [capture, next frame position]

    def __getstate__(self):  # captures cannot be pickled (spawned workers): start empty there
        return {"max_open": self.max_open, "max_forward_skip": self.max_forward_skip}

    def __setstate__(self, state):
        self.__init__(**state)

    def _capture(self, path: str) -> list:
        if self._pid != os.getpid():  # forked: the parent's captures are not ours to use ...
            # ... nor to free: their FFmpeg threads stayed in the parent, and releasing a capture without them
            # deadlocks. Keep them referenced (never destroyed; loader workers end with os._exit).
            _INHERITED_CAPTURES.append(self._captures)
            self._captures = OrderedDict()
            self._pid = os.getpid()
        entry = self._captures.get(path)
        if entry is not None:
            self._captures.move_to_end(path)
            return entry
        cap = cv2.VideoCapture(path)
        if not cap.isOpened():
            raise BadSampleError(path, "cannot open video")
        entry = self._captures[path] = [cap, 0]
        while len(self._captures) > self.max_open:
            _, (old, _) = self._captures.popitem(last=False)
            old.release()
        return entry

    def read(self, path: str, frame: int) -> DecodedImage:
        entry = self._capture(path)
        cap, position = entry
        if not 0 <= frame - position < self.max_forward_skip:
            cap.set(cv2.CAP_PROP_POS_FRAMES, frame)
            position = frame
        while position < frame:
            if not cap.grab():
                self._drop(path)
                raise BadSampleError(path, f"cannot decode frame {position} while seeking to frame {frame}")
            position += 1
        ok, bgr = cap.read()
        if not ok or bgr is None:
            self._drop(path)  # the capture's state is unknown after a failure: reopen next time
            raise BadSampleError(path, f"cannot decode frame {frame} (truncated or corrupt video?)")
        entry[1] = frame + 1
        return DecodedImage(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), bgr.shape[:2])

    def _drop(self, path: str) -> None:
        entry = self._captures.pop(path, None)
        if entry is not None:
            entry[0].release()

    def close(self) -> None:
        for cap, _ in self._captures.values():
            cap.release()
        self._captures.clear()
