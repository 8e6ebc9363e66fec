"""Undistort the Ego-Exo4D Aria videos: fisheye -> pinhole, every 5th frame as JPEG (docs/data_formats.md).

  python dataset_preprocess/undistort_egovideos.py [--root data/egoexo4d_v2] [--size 448] [--workers N]
         [--every 5] [--out ROOT/processed_data] [--take_uids UID ...]

For each take of metadata/takes.json (takes named "bouldering" are left out; without takes.json, every folder
of {root}/takes): reads takes/{take}/frame_aligned_videos/downscaled/448/aria01_214-1.mp4 and the take's
calibration, the "camera-rgb" camera of aria01_noimagestreams.vrs when present, else of
aria01_device_calibration.json (an Aria device-calibration JSON in projectaria-tools' factory-calibration
schema, as the synthetic world writes it). A calibration at another resolution than the video (real data:
1408 or 2880 px vs 448 px) is rescaled when the aspect ratio matches (one line names the take and both sizes);
otherwise the take is an error. Every 5th frame i (0, 5, 10, ...) is mapped with projectaria-tools
distort_by_calibration onto get_linear_camera_calibration(size, size, f * size / video_width), f being the
fisheye focal at the video resolution (the pixel map is computed once per take with distort_by_calibration
and applied with cv2.remap), and saved as {out}/{take_uid}/aria01_214-1/frame_{i}.jpg.
Parallel over takes; resumable: a take whose completion marker (.done, written last) matches --size/--every
is skipped, any other take folder is redone from scratch. Bad input (unreadable or truncated video, missing
or mismatched calibration) is reported with the file name and counted; the other takes go on.
Exit status 1 only when no take could be processed.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

import cv2
import numpy as np
from tqdm import tqdm

from internlm.data import egoexo_format as fmt
from internlm.data.process_pool import map_in_processes
from internlm.initialize.arguments import ScriptArgumentParser

JPEG_QUALITY = 95


@dataclass
class TakeResult:
    take_uid: str
    status: str  # "done" | "already done" | "failed"
    frames: int = 0
    kind: str = ""  # the problem's kind when failed
    message: str = ""  # the problem, or the calibration rescale note


def _marker_matches(marker: str, size: int, every: int) -> bool:
    try:
        with open(marker) as f:
            done = json.load(f)
        return done.get("size") == size and done.get("every") == every
    except (OSError, ValueError):
        return False


def pinhole_calibration(source, video_width: int, size: int):
    """The linear (pinhole) camera of the output: size x size px, the fisheye's focal scaled to the output."""
    from projectaria_tools.core import calibration

    focal = float(source.get_focal_lengths()[0]) * size / video_width
    return calibration.get_linear_camera_calibration(size, size, focal, fmt.ARIA_RGB_LABEL,
                                                     source.get_transform_device_camera())


def pixel_maps(target, source, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """For every pixel of the ``target`` (pinhole) image, the source (fisheye) pixel it shows: (H', W') float32
    x and y maps for cv2.remap, -1 where the source has no full pixel neighbourhood.

    Computed once per take by projectaria-tools distort_by_calibration on images of the pixel coordinates
    (bilinear interpolation of a linear ramp is exact), so each frame is one cv2.remap: the same bilinear
    result as distort_by_calibration on the frame (within 1 grey level) at a fraction of the cost.
    """
    from projectaria_tools.core import calibration

    cols, rows = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    map_x = calibration.distort_by_calibration(cols, target, source)
    map_y = calibration.distort_by_calibration(rows, target, source)
    covered = calibration.distort_by_calibration(np.ones_like(cols), target, source)  # < 1 where it ran off
    outside = covered < 1 - 1e-4
    map_x[outside], map_y[outside] = -1.0, -1.0
    return map_x, map_y


def undistort_take(task: tuple) -> TakeResult:
    """(root, take_uid, root_dir, out_root, size, every) -> frames written (or the problem, naming the file).

    Never raises: a failure of one take must not stop the others (it is reported with its take and error)."""
    try:
        return _undistort_take(*task)
    except Exception as err:  # noqa: BLE001 - reported with the take's name, the other takes go on
        out_dir = fmt.processed_frames_dir(task[3], task[1])
        shutil.rmtree(out_dir, ignore_errors=True)
        return TakeResult(task[1], "failed", kind="unexpected error",
                          message=f"take {task[1]} ({fmt.take_dir(task[0], task[1], task[2])}): "
                                  f"{type(err).__name__}: {err}")


def _undistort_take(root: str, take_uid: str, root_dir: Optional[str], out_root: str, size: int,
                    every: int) -> TakeResult:
    cv2.setNumThreads(1)
    out_dir = fmt.processed_frames_dir(out_root, take_uid)
    marker = os.path.join(out_dir, fmt.DONE_MARKER)
    if os.path.exists(marker) and _marker_matches(marker, size, every):
        return TakeResult(take_uid, "already done")
    folder = fmt.take_dir(root, take_uid, root_dir)
    video = fmt.aria_video_path(folder)
    if not os.path.exists(video):
        return TakeResult(take_uid, "failed", kind="missing video", message=f"{video}: video missing")
    capture = cv2.VideoCapture(video)
    try:
        ok, first = capture.read() if capture.isOpened() else (False, None)
        if not ok:
            return TakeResult(take_uid, "failed", kind="unreadable video",
                              message=f"{video}: cannot open or decode the video (corrupt or truncated)")
        height, width = first.shape[:2]
        try:
            source, note = fmt.fit_calibration_to_video(fmt.load_aria_calibration(folder), width, height)
        except FileNotFoundError as err:
            return TakeResult(take_uid, "failed", kind="missing calibration", message=str(err))
        except ValueError as err:
            kind = "calibration size mismatch" if "aspect" in str(err) else "unreadable calibration"
            return TakeResult(take_uid, "failed", kind=kind, message=f"take {take_uid} ({folder}): {err}")
        target = pinhole_calibration(source, width, size)
        focal = float(target.get_focal_lengths()[0])
        map_x, map_y = pixel_maps(target, source, width, height)
        if os.path.exists(out_dir):  # a half-written (or differently sized) take: start again
            shutil.rmtree(out_dir)
        os.makedirs(out_dir)
        expected = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        index, written, frame = 0, 0, first
        while True:
            if index % every == 0:
                if index > 0:
                    ok, frame = capture.retrieve()
                    if not ok:
                        break
                pinhole = cv2.remap(frame, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
                path = fmt.processed_frame_path(out_root, take_uid, index)
                if not cv2.imwrite(path, pinhole, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
                    raise OSError(f"{path}: could not write the JPEG")
                written += 1
            index += 1
            if not capture.grab():
                break
        if expected > 0 and index < expected:
            shutil.rmtree(out_dir)
            return TakeResult(take_uid, "failed", kind="truncated video",
                              message=f"{video}: decoded {index} of {expected} frames (truncated); take not written")
    finally:
        capture.release()
    with open(marker + ".partial", "w") as f:
        json.dump({"frames": written, "video_frames": index, "size": size, "every": every,
                   "video_size": [width, height], "focal": focal, "calibration": note or "same size"}, f)
    os.replace(marker + ".partial", marker)
    return TakeResult(take_uid, "done", frames=written, message=f"take {take_uid}: {note}" if note else "")


def list_takes(root: str, take_uids: Optional[list[str]], problems: fmt.ProblemLog) -> tuple[list, list]:
    """-> ([(take_uid, root_dir)], [dropped bouldering take uids])."""
    if os.path.exists(fmt.takes_json_path(root)):
        takes = [(t["take_uid"], t.get("root_dir"), str(t.get("take_name", ""))) for t in fmt.read_takes(root)]
    else:
        problems.add("no takes.json", f"{fmt.takes_json_path(root)} missing: undistorting every folder of "
                                      f"{os.path.join(root, 'takes')} (bouldering takes cannot be told apart)")
        folder = os.path.join(root, "takes")
        takes = [(name, None, "") for name in sorted(os.listdir(folder))] if os.path.isdir(folder) else []
    if take_uids:
        takes = [t for t in takes if t[0] in set(take_uids)]
    kept = [(uid, root_dir) for uid, root_dir, name in takes if not fmt.is_dropped_take(name)]
    return kept, [uid for uid, _, name in takes if fmt.is_dropped_take(name)]


@dataclass
class Summary:
    counts: Counter = field(default_factory=Counter)  # done / already done / failed
    frames: int = 0
    dropped: list[str] = field(default_factory=list)
    problems: fmt.ProblemLog = field(default_factory=fmt.ProblemLog)
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return [f"takes: {self.counts['done']} undistorted ({self.frames} frames), {self.counts['already done']} "
                f"already done, {self.counts['failed']} failed, {len(self.dropped)} bouldering left out",
                f"calibrations rescaled to the video size: {len(self.notes)}",
                f"problems: {self.problems.summary()}"]


def run(root: str, out: Optional[str] = None, size: int = 448, every: int = fmt.FRAME_STEP, workers: int = 1,
        take_uids: Optional[list[str]] = None, progress: bool = True, echo: bool = True) -> Summary:
    out = out or os.path.join(root, "processed_data")
    summary = Summary(problems=fmt.ProblemLog(echo=echo))
    takes, summary.dropped = list_takes(root, take_uids, summary.problems)
    tasks = [(root, uid, root_dir, out, size, every) for uid, root_dir in takes]
    results = map_in_processes(undistort_take, tasks, workers)
    for result in tqdm(results, total=len(tasks), desc="undistort", unit="take", disable=not progress):
        summary.counts[result.status] += 1
        summary.frames += result.frames
        if result.status == "failed":
            summary.problems.add(result.kind, result.message)
        elif result.message:
            summary.notes.append(result.message)
            if echo:
                tqdm.write(result.message, file=sys.stderr)
    return summary


def main(argv=None) -> int:
    p = ScriptArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2])
    p.add_argument("--root", default="data/egoexo4d_v2", help="Ego-Exo4D root (metadata/, takes/)")
    p.add_argument("--out", default=None, help="output folder (default: ROOT/processed_data)")
    p.add_argument("--size", type=int, default=448, help="output width = height, px")
    p.add_argument("--every", type=int, default=fmt.FRAME_STEP, help="keep every N-th frame")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes over takes")
    p.add_argument("--take_uids", nargs="*", help="only these takes (default: all)")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    summary = run(args.root, args.out, args.size, args.every, args.workers, args.take_uids,
                  progress=not args.no_progress)
    print("\n".join(summary.lines()))
    if not summary.counts["done"] + summary.counts["already done"]:
        print(f"ERROR: no take could be undistorted under {args.root}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
