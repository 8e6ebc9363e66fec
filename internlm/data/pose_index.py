"""A compact, cached index of one split of processed Ego-Exo4D poses (docs/data_formats.md).

The processed poses are ~100-frame JSON fragments per take, overlapping by 5 frames
(``{split}/{take_uid}_{first}-{last}.json``: {frame: {"pose": 17x3, "confidence": 17, "trajectory": 3,
"rotation": 3x3}}).
Parsing them is slow at full scale (9.5M pose frames), so the merged per-frame arrays are written once as
.npy files and memory-mapped afterwards: every worker and rank on a node shares the same pages.

Layout (F pose frames over K takes, rows of take k are [take_offsets[k], take_offsets[k + 1]), frames sorted):
  take_uids (K,) str, take_offsets (K + 1,) int64, frames (F,) int32, poses (F, 17, 3) float32 (metres, camera
  frame; a missing joint is -1, -1, -1), visible (F, 17) uint8, trajectory (F, 3) float32 (camera centre, world),
  rotation (F, 3, 3) float32 (world->camera; NaN for fragments written before the key existed).
The cache (default ~/.cache/egoagent/pose_index, see ``default_cache_root``) is keyed by the folder's absolute
path and the names, sizes and mtimes of its fragment files; it is rebuilt when any of them changes.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Optional

import numpy as np

from .bad_samples import IndexReport
from .egoexo_format import MISSING_JOINT_VALUE, NUM_JOINTS, list_pose_fragments, load_take_poses

logger = logging.getLogger("internlm.data")

_CACHE_VERSION = "pose-index-v2"
_ARRAYS = ("take_uids", "take_offsets", "frames", "poses", "visible", "trajectory", "rotation")


def list_fragments(split_dir: str) -> dict[str, list[str]]:
    """take_uid -> paths of its fragment files, ordered by first frame."""
    if not os.path.isdir(split_dir):
        raise FileNotFoundError(f"pose folder {split_dir} does not exist (expected {{split}}/{{take_uid}}_a-b.json)")
    return list_pose_fragments(split_dir)


def visibility(pose: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    """(..., 17, 3), (..., 17) -> (..., 17) uint8: 1 where the joint was annotated."""
    annotated = ~np.all(pose == MISSING_JOINT_VALUE, axis=-1)
    return (annotated & (confidence > 0)).astype(np.uint8)


def _problem(reason: str) -> str:
    """A count category for one of load_take_poses' "file: frame F: reason" lines."""
    for keyword, category in (("NaN", "NaN pose"), ("missing key", "missing key"), ("shape", "wrong shape")):
        if keyword in reason:
            return category
    return "malformed pose frame"


def parse_take(fragment_paths: list[str]):
    """Merge one take's fragments -> frames (F,) int32, poses (F, 17, 3), visible (F, 17), trajectory (F, 3),
    rotation (F, 3, 3), report.

    Each fragment is read on its own (egoexo_format.load_take_poses) so an unreadable file loses only itself;
    on the 5-frame overlaps the earlier fragment wins.
    """
    report = IndexReport("poses")
    merged: dict[int, tuple[np.ndarray, ...]] = {}
    for path in fragment_paths:
        try:
            part = load_take_poses([path])
        except ValueError as err:
            report.add("unreadable pose file", str(err))
            continue
        for line in part.dropped:
            report.add(_problem(line), line)
        for row in zip(part.frames.tolist(), part.pose, part.confidence, part.trajectory, part.rotation):
            merged.setdefault(row[0], row[1:])
    frames = np.array(sorted(merged), np.int32)
    if not len(frames):
        return (frames, np.zeros((0, NUM_JOINTS, 3), np.float32), np.zeros((0, NUM_JOINTS), np.uint8),
                np.zeros((0, 3), np.float32), np.zeros((0, 3, 3), np.float32), report)
    poses, confidence, trajectory, rotation = (np.stack([merged[f][i] for f in frames]).astype(np.float32)
                                               for i in range(4))
    return frames, poses, visibility(poses, confidence), trajectory, rotation, report


def _parse_take_job(fragment_paths):
    return parse_take(fragment_paths)


@dataclass
class PoseIndex:
    take_uids: np.ndarray  # (K,) str
    take_offsets: np.ndarray  # (K + 1,) int64
    frames: np.ndarray  # (F,) int32
    poses: np.ndarray  # (F, 17, 3) float32
    visible: np.ndarray  # (F, 17) uint8
    trajectory: np.ndarray  # (F, 3) float32 camera centre in world coordinates
    rotation: np.ndarray  # (F, 3, 3) float32 world->camera rotation (NaN: not in the fragment)
    report: IndexReport

    @property
    def take_of_row(self) -> np.ndarray:
        """(F,) int32: the take of every row."""
        return np.repeat(np.arange(len(self.take_uids), dtype=np.int32), np.diff(self.take_offsets))


def _build(split_dir: str, fragments: dict[str, list[str]], workers: int) -> PoseIndex:
    jobs = list(fragments.values())
    if workers > 1 and len(jobs) > 8:
        with get_context("fork").Pool(workers) as pool:
            parsed = pool.map(_parse_take_job, jobs, chunksize=max(1, len(jobs) // (workers * 8)))
    else:
        parsed = [parse_take(job) for job in jobs]
    report = IndexReport(f"poses in {split_dir}")
    for *_, take_report in parsed:
        report.merge(take_report)
    lengths = [len(frames) for frames, *_ in parsed]
    return PoseIndex(
        take_uids=np.array(list(fragments), dtype=str),
        take_offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        frames=np.concatenate([p[0] for p in parsed]) if parsed else np.zeros(0, np.int32),
        poses=np.concatenate([p[1] for p in parsed]) if parsed else np.zeros((0, NUM_JOINTS, 3), np.float32),
        visible=np.concatenate([p[2] for p in parsed]) if parsed else np.zeros((0, NUM_JOINTS), np.uint8),
        trajectory=np.concatenate([p[3] for p in parsed]) if parsed else np.zeros((0, 3), np.float32),
        rotation=np.concatenate([p[4] for p in parsed]) if parsed else np.zeros((0, 3, 3), np.float32),
        report=report,
    )


def _cache_key(split_dir: str, fragments: dict[str, list[str]]) -> str:
    digest = hashlib.sha1(f"{_CACHE_VERSION}\n{os.path.abspath(split_dir)}\n".encode())
    for paths in fragments.values():
        for path in paths:
            st = os.stat(path)
            digest.update(f"{os.path.basename(path)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:20]


def default_cache_root() -> str:
    """$EGOAGENT_CACHE_DIR, else $XDG_CACHE_HOME/egoagent, else ~/.cache/egoagent (never inside the data)."""
    root = os.environ.get("EGOAGENT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "egoagent")
    return os.path.join(root, "pose_index")


def _writable_cache_root(cache_dir: Optional[str]) -> str:
    candidates = [cache_dir] if cache_dir else [default_cache_root(),
                                                os.path.join(tempfile.gettempdir(), "egoagent_pose_index")]
    for root in candidates:
        try:
            os.makedirs(root, exist_ok=True)
            if os.access(root, os.W_OK):
                return root
        except OSError:
            continue
    raise OSError(f"no writable folder for the pose index cache among {candidates}; pass cache_dir or set "
                  "EGOAGENT_CACHE_DIR")


def _save(index: PoseIndex, folder: str) -> None:
    for name in _ARRAYS:
        np.save(os.path.join(folder, name + ".npy"), getattr(index, name))
    with open(os.path.join(folder, "report.json"), "w") as f:
        json.dump({"what": index.report.what, "counts": index.report.counts, "names": index.report.names}, f)


def _load(folder: str) -> PoseIndex:
    arrays = {name: np.load(os.path.join(folder, name + ".npy"), mmap_mode="r") for name in _ARRAYS}
    arrays["take_uids"] = np.asarray(arrays["take_uids"])  # small; strings are not mmapped
    with open(os.path.join(folder, "report.json")) as f:
        saved = json.load(f)
    report = IndexReport(saved["what"])
    report.counts.update(saved["counts"])
    report.names = saved["names"]
    return PoseIndex(report=report, **arrays)


def load_pose_index(split_dir: str, cache_dir: Optional[str] = None, workers: Optional[int] = None,
                    use_cache: bool = True) -> PoseIndex:
    """The merged poses of every take in ``split_dir``, from the cache when it is current.

    Concurrent callers (ranks of one node) take a file lock: one builds, the others wait and load.
    """
    fragments = list_fragments(split_dir)
    workers = workers if workers is not None else min(8, os.cpu_count() or 1)
    if not use_cache:
        return _build(split_dir, fragments, workers)
    root = _writable_cache_root(cache_dir)
    key = _cache_key(split_dir, fragments)
    final = os.path.join(root, f"{os.path.basename(os.path.normpath(split_dir))}-{key}")
    with open(final + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.isfile(os.path.join(final, "report.json")):
            logger.info("building the pose index of %s (%d takes) into %s", split_dir, len(fragments), final)
            index = _build(split_dir, fragments, workers)
            tmp = tempfile.mkdtemp(dir=root, prefix=".tmp-")
            _save(index, tmp)
            shutil.rmtree(final, ignore_errors=True)
            os.rename(tmp, final)  # atomic: a reader sees no folder or a complete one
    return _load(final)
