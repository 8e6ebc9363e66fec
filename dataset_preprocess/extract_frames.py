"""Extract the frames of WalkingTours videos as JPEGs, like the ffmpeg step of docs/training.md (docs/data_formats.md).

  python dataset_preprocess/extract_frames.py data/WTour/Walking_Tour_Venice.mp4 [more.mp4 ...]
         [--out FOLDER] [--every N] [--quality 95] [--workers N]

Writes {out}/{video stem}/frame_%07d.jpg (default out: the video's own folder, the authors' layout
data/WTour/Walking_Tour_X/frame_%07d.jpg), numbered from 1 like ``ffmpeg -i video.mp4 frame_%07d.jpg``: video frame
k (0-based) is frame_{k+1:07d}.jpg. With --every N only frames k = 0, N, 2N, ... are kept, under the same names, so
the numbers still count video frames. Stage 1 then reads a listed video's frames from its folder (the same frames,
without decoding the video). Resumable: a folder whose completion marker (.done, written last; it records the
video's fps, which data.sample_fps needs) matches --every is skipped. An unreadable or truncated video is reported
with its file name and skipped; exit status 1 only when no video could be extracted.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import cv2
from tqdm import tqdm

from internlm.data.process_pool import map_in_processes
from internlm.initialize.arguments import ScriptArgumentParser

DONE_MARKER = ".done"


def frame_name(index: int) -> str:
    """0-based video frame index -> ffmpeg-style 1-based file name."""
    return f"frame_{index + 1:07d}.jpg"


def extract_video(task: tuple[str, str, int, int]) -> tuple[str, str, int]:
    """(video, out_folder, every, quality) -> (status 'done' | 'already done' | 'failed', message, frames)."""
    video, folder, every, quality = task
    cv2.setNumThreads(1)
    marker = os.path.join(folder, DONE_MARKER)
    if os.path.exists(marker):
        try:
            with open(marker) as f:
                if json.load(f).get("every") == every:
                    return "already done", "", 0
        except (OSError, ValueError):
            pass
    capture = cv2.VideoCapture(video)
    if not capture.isOpened():
        return "failed", f"{video}: cannot open the video (corrupt, truncated or not a video)", 0
    if os.path.exists(folder):
        shutil.rmtree(folder)  # half-written or made with another --every: start again
    os.makedirs(folder)
    expected = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    fps = float(capture.get(cv2.CAP_PROP_FPS))
    index, written = 0, 0
    try:
        while capture.grab():
            if index % every == 0:
                ok, frame = capture.retrieve()
                if not ok:
                    break
                if not cv2.imwrite(os.path.join(folder, frame_name(index)), frame, [cv2.IMWRITE_JPEG_QUALITY, quality]):
                    raise OSError(f"{folder}: cannot write {frame_name(index)}")
                written += 1
            index += 1
    finally:
        capture.release()
    if index == 0 or (expected > 0 and index < expected):
        shutil.rmtree(folder)
        return "failed", f"{video}: decoded {index} of {expected} frames (corrupt or truncated): skipped", 0
    with open(marker, "w") as f:
        json.dump({"frames": written, "video_frames": index, "every": every, "fps": fps}, f)
    return "done", "", written


def main(argv=None) -> int:
    p = ScriptArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2])
    p.add_argument("videos", nargs="+", help="mp4 files")
    p.add_argument("--out", default=None, help="parent folder of the frame folders (default: next to each video)")
    p.add_argument("--every", type=int, default=1, help="keep every N-th frame (names keep the video numbering)")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality")
    p.add_argument("--workers", type=int, default=1, help="processes over videos")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    tasks = [(v, os.path.join(args.out or os.path.dirname(os.path.abspath(v)),
                              os.path.splitext(os.path.basename(v))[0]), args.every, args.quality) for v in args.videos]
    results = map_in_processes(extract_video, tasks, args.workers, ordered=True)
    counts, frames = {"done": 0, "already done": 0, "failed": 0}, 0
    for status, message, n in tqdm(results, total=len(tasks), desc="extract", unit="video", disable=args.no_progress):
        counts[status] += 1
        frames += n
        if message:
            tqdm.write(f"WARNING: {message}", file=sys.stderr)
    print(f"videos: {counts['done']} extracted ({frames} frames), {counts['already done']} already done, "
          f"{counts['failed']} failed")
    return 0 if counts["done"] + counts["already done"] else 1


if __name__ == "__main__":
    sys.exit(main())
