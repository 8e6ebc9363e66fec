"""Undistort the Ego-Exo4D Aria videos: fisheye -> pinhole, every 5th frame as JPEG (docs/data_formats.md).

  python dataset_preprocess/undistort_egovideos.py [--root data/egoexo4d_v2] [--size 448] [--workers N]
         [--every 5] [--video downscaled|full] [--out ROOT/processed_data] [--take_uids UID ...]

Reads the tree Ego-Exo4D's downloader writes (egoexo -o ROOT --parts metadata downscaled_takes/448
take_vrs_noimagestream; the full-resolution part takes and the part take_vrs work too). For each take of
ROOT/takes.json (or ROOT/metadata/takes.json) whose folder ROOT/{root_dir} (takes/{take_name}) was downloaded, takes
named "bouldering" left out: the take's Aria device {aria} (aria01, aria02, ...) from takes.json, its RGB video
frame_aligned_videos/downscaled/448/{aria}_214-1.mp4 or the full-resolution frame_aligned_videos/{aria}_214-1.mp4
(--video says which to read when both are there), and its calibration, the "camera-rgb" camera of
{aria}_noimagestreams.vrs or {aria}.vrs (else of {aria}_device_calibration.json, an Aria device-calibration JSON in
projectaria-tools' factory-calibration schema, as the synthetic world writes it). A calibration at another
resolution than the video (real data: 2880 or 1408 px vs 1408 or 448 px) is rescaled when the aspect ratio
matches (one line names the take and both sizes); otherwise the take is an error. Every 5th frame i (0, 5, 10,
...) is mapped with projectaria-tools distort_by_calibration onto get_linear_camera_calibration(size, size,
f * size / video_width), f being the fisheye focal at the video resolution (the pixel map is computed once per
take with distort_by_calibration and applied with cv2.remap), and saved as
{out}/{take_uid}/aria01_214-1/frame_{i}.jpg (keyed by take_uid, the folder named aria01_214-1 for any device).
Parallel over takes; resumable: a take whose completion marker (.done, written last) matches --size/--every is
skipped, any other take folder is redone from scratch. Bad input (unreadable or truncated video, missing or
mismatched calibration) is reported with the file name and counted; the other takes go on.
Exit status 1 when no take could be processed; the message names the Ego-Exo4D part to download.
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


@dataclass(frozen=True)
class TakeTask:
    root: str
    take_uid: str
    take_name: str
    folder: str  # the downloaded take folder
    aria: str  # the Aria device, aria01, aria02, ...
    out_root: str
    size: int
    every: int
    prefer: str  # the video kind read when both are there: downscaled | full


def undistort_take(task: TakeTask) -> TakeResult:
    """One take's frames written (or the problem, naming the file). Never raises: a failure of one take must not
    stop the others (it is reported with its take and error)."""
    try:
        return _undistort_take(task)
    except Exception as err:  # noqa: BLE001 - reported with the take's name, the other takes go on
        shutil.rmtree(fmt.processed_frames_dir(task.out_root, task.take_uid), ignore_errors=True)
        return TakeResult(task.take_uid, "failed", kind="unexpected error",
                          message=f"take {task.take_name} ({task.folder}): {type(err).__name__}: {err}")


def _undistort_take(task: TakeTask) -> TakeResult:
    cv2.setNumThreads(1)
    take_uid, size, every = task.take_uid, task.size, task.every
    out_dir = fmt.processed_frames_dir(task.out_root, take_uid)
    marker = os.path.join(out_dir, fmt.DONE_MARKER)
    if os.path.exists(marker) and _marker_matches(marker, size, every):
        return TakeResult(take_uid, "already done")
    found = fmt.find_aria_video(task.folder, task.aria, task.prefer)
    if found is None:
        why = fmt.missing_video_message(task.root, task.folder, task.aria)
        return TakeResult(take_uid, "failed", kind="missing video", message=f"take {task.take_name}: {why}")
    video, video_kind = found
    capture = cv2.VideoCapture(video)
    try:
        ok, first = capture.read() if capture.isOpened() else (False, None)
        if not ok:
            return TakeResult(take_uid, "failed", kind="unreadable video",
                              message=f"{video}: cannot open or decode the video (corrupt or truncated)")
        height, width = first.shape[:2]
        try:
            camera, calibration_file = fmt.load_aria_calibration(task.folder, task.aria)
            source, note = fmt.fit_calibration_to_video(camera, width, height)
        except FileNotFoundError as err:
            return TakeResult(take_uid, "failed", kind="missing calibration",
                              message=f"take {task.take_name}: {err}")
        except ValueError as err:
            kind = "calibration size mismatch" if "aspect" in str(err) else "unreadable calibration"
            return TakeResult(take_uid, "failed", kind=kind, message=f"take {task.take_name} ({task.folder}): {err}")
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
                path = fmt.processed_frame_path(task.out_root, take_uid, index)
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
                   "video_size": [width, height], "focal": focal, "calibration": note or "same size",
                   "take_name": task.take_name, "video": os.path.relpath(video, task.root), "video_kind": video_kind,
                   "calibration_file": os.path.relpath(calibration_file, task.root)}, f)
    os.replace(marker + ".partial", marker)
    return TakeResult(take_uid, "done", frames=written, message=f"take {task.take_name}: {note}" if note else "")


@dataclass
class TakeList:
    kept: list[dict]  # takes.json entries whose folder was downloaded
    dropped: list[str]  # bouldering take uids
    not_downloaded: int  # takes of takes.json without a folder


def list_takes(root: str, take_uids: Optional[list[str]]) -> TakeList:
    """The takes.json entries to undistort; FileNotFoundError (naming the part) without takes.json."""
    takes = fmt.read_takes(root)
    if take_uids:
        wanted = set(take_uids)
        unknown = sorted(wanted - {t["take_uid"] for t in takes})
        if unknown:
            raise ValueError(f"--take_uids: {unknown[:5]} not in {fmt.takes_json_path(root)}")
        takes = [t for t in takes if t["take_uid"] in wanted]
    dropped = [t["take_uid"] for t in takes if fmt.is_dropped_take(str(t.get("take_name", "")))]
    kept = [t for t in takes if not fmt.is_dropped_take(str(t.get("take_name", "")))]
    present = [t for t in kept if os.path.isdir(fmt.take_dir(root, t))]
    return TakeList(present, dropped, len(kept) - len(present))


@dataclass
class Summary:
    counts: Counter = field(default_factory=Counter)  # done / already done / failed
    frames: int = 0
    dropped: list[str] = field(default_factory=list)
    not_downloaded: int = 0
    problems: fmt.ProblemLog = field(default_factory=fmt.ProblemLog)
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return [f"takes: {self.counts['done']} undistorted ({self.frames} frames), {self.counts['already done']} "
                f"already done, {self.counts['failed']} failed, {len(self.dropped)} bouldering left out, "
                f"{self.not_downloaded} in takes.json without a downloaded folder",
                f"calibrations rescaled to the video size: {len(self.notes)}",
                f"problems: {self.problems.summary()}"]


def run(root: str, out: Optional[str] = None, size: int = 448, every: int = fmt.FRAME_STEP, workers: int = 1,
        take_uids: Optional[list[str]] = None, progress: bool = True, echo: bool = True,
        prefer: str = "downscaled") -> Summary:
    """Undistorts the takes of ``root``; FileNotFoundError (naming the part to download) without takes.json."""
    if prefer not in fmt.VIDEO_KINDS:
        raise ValueError(f"video kind {prefer!r}: expected one of {', '.join(fmt.VIDEO_KINDS)}")
    out = out or os.path.join(root, "processed_data")
    summary = Summary(problems=fmt.ProblemLog(echo=echo))
    listed = list_takes(root, take_uids)
    summary.dropped, summary.not_downloaded = listed.dropped, listed.not_downloaded
    tasks = []
    for take in listed.kept:
        folder = fmt.take_dir(root, take)
        tasks.append(TakeTask(root, take["take_uid"], str(take.get("take_name", take["take_uid"])), folder,
                              fmt.aria_device(take, folder), out, size, every, prefer))
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


def nothing_done_message(root: str, summary: Summary) -> str:
    """Why no take was undistorted, and the Ego-Exo4D part that would give one."""
    kinds = summary.problems.counts
    if not summary.counts["failed"]:
        return (f"no take folder of {fmt.takes_json_path(root)} under {root}: download the Aria videos, part "
                f"downscaled_takes/448 ({fmt.download_command(root, 'downscaled_takes/448')}) or part takes")
    if kinds["missing video"] == summary.counts["failed"]:
        return ("no take has an Aria video: download part downscaled_takes/448 "
                f"({fmt.download_command(root, 'downscaled_takes/448')}) or part takes")
    if kinds["missing calibration"] == summary.counts["failed"]:
        return ("no take has a calibration: download part take_vrs_noimagestream "
                f"({fmt.download_command(root, 'take_vrs_noimagestream')}) or part take_vrs")
    return f"no take could be undistorted under {root} (problems: {summary.problems.summary()})"


def main(argv=None) -> int:
    p = ScriptArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2])
    p.add_argument("--root", default="data/egoexo4d_v2", help="Ego-Exo4D download root (takes.json, takes/)")
    p.add_argument("--out", default=None, help="output folder (default: ROOT/processed_data)")
    p.add_argument("--size", type=int, default=448, help="output width = height, px")
    p.add_argument("--every", type=int, default=fmt.FRAME_STEP, help="keep every N-th frame")
    p.add_argument("--video", default="downscaled", choices=list(fmt.VIDEO_KINDS),
                   help="the Aria video read when a take has both: downscaled (448 px, part downscaled_takes/448) "
                        "or full (1408 px, part takes)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes over takes")
    p.add_argument("--take_uids", nargs="*", help="only these takes (default: all)")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    try:
        summary = run(args.root, args.out, args.size, args.every, args.workers, args.take_uids,
                      progress=not args.no_progress, prefer=args.video)
    except (FileNotFoundError, ValueError) as err:
        print(f"ERROR: {err}", file=sys.stderr)
        return 1
    print("\n".join(summary.lines()))
    if not summary.counts["done"] + summary.counts["already done"]:
        print(f"ERROR: {nothing_done_message(args.root, summary)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
