"""Ego-Exo4D body poses -> per-take fragments in the Aria camera frame (formats: docs/data_formats.md).

  python dataset_preprocess/preprocess_egoexo_body_pose.py [--root data/egoexo4d_v2]
         [--out data/egoexo4d_body_pose] [--splits train val] [--workers N]

Reads what Ego-Exo4D's downloader writes with egoexo -o ROOT --parts metadata annotations: ROOT/takes.json (or
ROOT/metadata/takes.json) and ROOT/annotations/ego_pose/{split}/{body/annotation,body/automatic,camera_pose}/.
For every take of a split (the takes with a manual or automatic body file), every frame that has a body label:
  - the label: the manual one when the frame has one, else the automatic one (frame by frame, as in the paper);
  - the frame's Aria world->camera extrinsic [R | t] (camera_pose/{take_uid}.json, first key containing "aria");
  - "pose": each joint X (world, metres) mapped to R X + t, the Aria camera frame of THAT frame; a joint the
    label does not have -> [-1, -1, -1] with "confidence" 0 (1 otherwise);
  - "trajectory": the camera centre of that frame in world coordinates, -R^T t (metres);
  - "rotation": the frame's world->camera rotation R (with the trajectory, the loaders can put a clip's poses in
    the world, the take's first camera or the clip's first camera: data.pose_frame).
Written as {out}/{split}/{take_uid}_{first}-{last}.json, fragments of 100 frames whose first 5 frames repeat
the previous fragment's last 5. Takes named "bouldering" are dropped. Frames without a camera pose are dropped.
Bad input (an unreadable file, a frame with missing keys or NaN, a missing camera-pose file) is reported with the
file name, counted in the summary, and skipped; a bad manual frame falls back to the automatic label.
Exit status 1 when nothing could be processed; the message names the Ego-Exo4D part to download.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from tqdm import tqdm

from internlm.data import egoexo_format as fmt
from internlm.data.process_pool import map_in_processes
from internlm.initialize.arguments import ScriptArgumentParser

COORD_DECIMALS = 6  # micrometres: far below the labels' accuracy, keeps the files small and deterministic
ROTATION_DECIMALS = 7  # 1e-7 per entry: a 1e-7 m error at a metre, still a rotation to 1e-6


@dataclass
class TakeResult:
    split: str
    take_uid: str
    fragments: int = 0
    frames: int = 0
    manual_frames: int = 0
    automatic_frames: int = 0
    problems: list[tuple[str, str, int]] = field(default_factory=list)  # (kind, message naming the file, count)

    def problem(self, kind: str, message: str, count: int = 1) -> None:
        self.problems.append((kind, message, count))


def _joint_array(label, path: str, frame: str) -> tuple[np.ndarray, np.ndarray]:
    """One frame's label -> ((17, 3) world joints, (17,) bool present); ValueError says what is wrong."""
    if not isinstance(label, list) or not label or not isinstance(label[0], dict):
        raise ValueError("expected a non-empty list of label objects")
    joints3d = label[0].get("annotation3D")
    if not isinstance(joints3d, dict):
        raise ValueError("missing key 'annotation3D'")
    points = np.full((fmt.NUM_JOINTS, 3), np.nan)
    present = np.zeros(fmt.NUM_JOINTS, bool)
    for name, value in joints3d.items():
        j = fmt.JOINT_INDEX.get(name)
        if j is None:
            continue  # a joint outside the 17 body joints: not ours
        if not isinstance(value, dict) or any(k not in value for k in "xyz"):
            raise ValueError(f"joint '{name}' lacks x/y/z")
        try:
            xyz = np.array([float(value["x"]), float(value["y"]), float(value["z"])])
        except (TypeError, ValueError):
            raise ValueError(f"joint '{name}' has non-numeric coordinates") from None
        if not np.all(np.isfinite(xyz)):
            raise ValueError(f"joint '{name}' has NaN/inf coordinates")
        points[j], present[j] = xyz, True
    return points, present


def read_body_labels(path: str, result: TakeResult, kind: str) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """A manual/automatic body file -> {frame: (joints (17, 3), present (17,))}; bad frames reported and left out."""
    if not os.path.exists(path):
        return {}
    try:
        content = fmt.read_json(path)
        if not isinstance(content, dict):
            raise ValueError(f"{path}: expected {{frame_number: [label]}}, got {type(content).__name__}")
    except ValueError as err:
        result.problem(f"unreadable {kind} pose file", str(err))
        return {}
    labels, bad = {}, []
    for frame, label in content.items():
        try:
            if not str(frame).isdigit():
                raise ValueError("not a frame number")
            labels[int(frame)] = _joint_array(label, path, frame)
        except ValueError as err:
            bad.append(f"frame {frame}: {err}")
    if bad:
        result.problem(f"bad {kind} pose frames", f"{path}: {len(bad)} frame(s) skipped ({'; '.join(bad[:3])}"
                                                  f"{'; ...' if len(bad) > 3 else ''})", count=len(bad))
    return labels


def read_extrinsics(path: str, result: TakeResult) -> Optional[dict[int, np.ndarray]]:
    """camera_pose file -> {frame: (3, 4) world->camera} of the Aria camera; None (reported) if unusable."""
    if not os.path.exists(path):
        result.problem("missing camera-pose file", f"{path}: camera-pose file missing: take {result.take_uid} skipped")
        return None
    try:
        content = fmt.read_json(path)
        key = fmt.aria_key(content) if isinstance(content, dict) else None
        if key is None:
            raise ValueError(f"{path}: no key containing 'aria'")
        extrinsics = content[key].get("camera_extrinsics") if isinstance(content[key], dict) else None
        if not isinstance(extrinsics, dict):
            raise ValueError(f"{path}: '{key}' has no 'camera_extrinsics' {{frame: 3x4}} object")
    except ValueError as err:
        result.problem("unreadable camera-pose file", f"{err}: take {result.take_uid} skipped")
        return None
    out, bad = {}, []
    for frame, matrix in extrinsics.items():
        try:
            m = np.asarray(matrix, np.float64)
        except (TypeError, ValueError):
            m = np.zeros(0)
        if not str(frame).isdigit() or m.shape != (3, 4) or not np.all(np.isfinite(m)) or not fmt.is_rotation(m[:, :3]):
            bad.append(str(frame))
            continue
        out[int(frame)] = m
    if bad:
        result.problem("bad camera extrinsics", f"{path}: {len(bad)} frame(s) with a malformed/NaN/non-rotation "
                                                f"extrinsic skipped (e.g. frame {bad[0]})", count=len(bad))
    return out


def process_take(task: tuple[str, str, str, str]) -> TakeResult:
    """(root, split, take_uid, out_split_dir) -> fragments written; all problems in the returned result."""
    root, split, take_uid, out_dir = task
    result = TakeResult(split, take_uid)
    extrinsics = read_extrinsics(fmt.camera_pose_path(root, split, take_uid), result)
    if extrinsics is None:
        return result
    manual = read_body_labels(fmt.manual_pose_path(root, split, take_uid), result, "manual")
    automatic = read_body_labels(fmt.automatic_pose_path(root, split, take_uid), result, "automatic")
    frames, no_camera = {}, []
    for frame in sorted(set(manual) | set(automatic)):
        if frame not in extrinsics:
            no_camera.append(frame)
            continue
        joints, present = manual[frame] if frame in manual else automatic[frame]
        result.manual_frames += frame in manual
        result.automatic_frames += frame not in manual
        e = extrinsics[frame]
        pose = np.where(present[:, None], joints @ e[:, :3].T + e[:, 3], fmt.MISSING_JOINT_VALUE)  # (17, 3)
        frames[frame] = {"pose": np.round(pose, COORD_DECIMALS).tolist(),
                         "confidence": present.astype(int).tolist(),
                         "trajectory": np.round(fmt.camera_centre(e), COORD_DECIMALS).tolist(),
                         "rotation": np.round(e[:, :3], ROTATION_DECIMALS).tolist()}
    if no_camera:
        result.problem("frames without camera pose",
                       f"{fmt.camera_pose_path(root, split, take_uid)}: no extrinsic for {len(no_camera)} labelled "
                       f"frame(s) (e.g. {no_camera[:3]}): dropped", count=len(no_camera))
    if not frames:
        result.problem("takes without usable frames", f"take {take_uid} ({split}): no labelled frame with a camera "
                                                      "pose: skipped")
        return result
    result.frames = len(frames)
    result.fragments = write_fragments(out_dir, take_uid, frames)
    return result


def fragment_spans(n: int, length: int = fmt.FRAGMENT_LENGTH, overlap: int = fmt.FRAGMENT_OVERLAP):
    """[start, end) index ranges over n sorted frames: ``length`` long, each starting ``overlap`` before the
    previous one's end; a last piece holding only overlap frames is not written."""
    spans, start = [], 0
    while True:
        end = min(start + length, n)
        spans.append((start, end))
        if end >= n:
            return spans
        start = end - overlap


def write_fragments(out_dir: str, take_uid: str, frames: dict[int, dict]) -> int:
    """Writes the take's fragments (replacing earlier ones of this take); returns how many."""
    import json

    os.makedirs(out_dir, exist_ok=True)
    for stale in os.listdir(out_dir):
        parsed = fmt.parse_pose_fragment_name(stale)
        if parsed is not None and parsed[0] == take_uid:
            os.remove(os.path.join(out_dir, stale))
    order = sorted(frames)
    spans = fragment_spans(len(order))
    for start, end in spans:
        chunk = {str(f): frames[f] for f in order[start:end]}
        path = os.path.join(out_dir, fmt.pose_fragment_name(take_uid, order[start], order[end - 1]))
        with open(path + ".partial", "w") as f:
            f.write(json.dumps(chunk, separators=(",", ":")))
        os.replace(path + ".partial", path)
    return len(spans)


def list_split_takes(root: str, split: str) -> list[str]:
    """Take uids that have a manual or automatic body file in ``split``."""
    uids = set()
    for kind in ("annotation", "automatic"):
        folder = os.path.join(fmt.ego_pose_dir(root, split), "body", kind)
        if os.path.isdir(folder):
            uids |= {name[:-5] for name in os.listdir(folder) if name.endswith(".json")}
    return sorted(uids)


@dataclass
class Summary:
    takes: Counter = field(default_factory=Counter)  # split -> takes with fragments written
    frames: Counter = field(default_factory=Counter)
    fragments: Counter = field(default_factory=Counter)
    manual_frames: int = 0
    automatic_frames: int = 0
    dropped_takes: list[str] = field(default_factory=list)  # bouldering
    problems: fmt.ProblemLog = field(default_factory=fmt.ProblemLog)

    def lines(self) -> list[str]:
        out = [f"{split}: {self.takes[split]} takes, {self.frames[split]} frames, {self.fragments[split]} fragments"
               for split in sorted(set(self.takes) | set(self.frames))]
        out.append(f"labels used: {self.manual_frames} manual, {self.automatic_frames} automatic frames")
        out.append(f"dropped takes (name contains '{fmt.DROPPED_TAKE_KEYWORD}'): {len(self.dropped_takes)}")
        out.append(f"skipped: {self.problems.summary()}")
        return out


def run(root: str, out: str, splits=fmt.SPLITS, workers: int = 1, progress: bool = True,
        echo: bool = True) -> Summary:
    """Writes the pose fragments of ``splits``; FileNotFoundError (naming the part to download) without takes.json."""
    summary = Summary(problems=fmt.ProblemLog(echo=echo))
    names = {t["take_uid"]: str(t.get("take_name", "")) for t in fmt.read_takes(root)}
    tasks = []
    for split in splits:
        body = os.path.join(fmt.ego_pose_dir(root, split), "body")
        if os.path.isdir(os.path.join(body, "annotation")) and not os.path.isdir(os.path.join(body, "automatic")):
            summary.problems.add("splits without automatic labels",
                                 f"{os.path.join(body, 'automatic')} missing: only the manual labels of {split} are "
                                 "used (the official body-pose baseline downloads the automatic ones with part "
                                 "ego_pose_pseudo_gt)")
        for uid in list_split_takes(root, split):
            if uid not in names:
                summary.problems.add("takes not in takes.json", f"{fmt.takes_json_path(root)}: take {uid} ({split}) "
                                                                "is not listed: skipped")
            elif fmt.is_dropped_take(names[uid]):
                summary.dropped_takes.append(uid)
            else:
                tasks.append((root, split, uid, os.path.join(out, split)))
    results = map_in_processes(process_take, tasks, workers)
    for result in tqdm(results, total=len(tasks), desc="body poses", unit="take", disable=not progress):
        for kind, message, count in result.problems:
            summary.problems.add(kind, message, count)
        if result.fragments:
            summary.takes[result.split] += 1
            summary.frames[result.split] += result.frames
            summary.fragments[result.split] += result.fragments
        summary.manual_frames += result.manual_frames
        summary.automatic_frames += result.automatic_frames
    return summary


def nothing_done_message(root: str, splits) -> str:
    """Why no fragment was written, and the Ego-Exo4D part that would give some."""
    body = [os.path.join(fmt.ego_pose_dir(root, split), "body") for split in splits]
    if not any(os.path.isdir(os.path.join(b, kind)) for b in body for kind in ("annotation", "automatic")):
        return (f"no body-pose labels: none of {', '.join(body)} holds annotation/ or automatic/; download part "
                f"annotations ({fmt.download_command(root, 'metadata', 'annotations')}; the official body-pose "
                "baseline adds part ego_pose_pseudo_gt for the automatic labels)")
    return f"no pose fragment written from {root} (see the problems above)"


def main(argv=None) -> int:
    p = ScriptArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2])
    p.add_argument("--root", default="data/egoexo4d_v2", help="Ego-Exo4D download root (takes.json, annotations/)")
    p.add_argument("--out", default="data/egoexo4d_body_pose", help="output folder ({out}/{split}/...)")
    p.add_argument("--splits", nargs="+", default=list(fmt.SPLITS), help="the ego_pose splits to process")
    p.add_argument("--workers", type=int, default=1, help="processes over takes")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    try:
        summary = run(args.root, args.out, args.splits, args.workers, progress=not args.no_progress)
    except (FileNotFoundError, ValueError) as err:
        print(f"ERROR: {err}", file=sys.stderr)
        return 1
    print("\n".join(summary.lines()))
    if not sum(summary.fragments.values()):
        print(f"ERROR: {nothing_done_message(args.root, args.splits)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
