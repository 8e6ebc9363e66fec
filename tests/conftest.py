"""Shared fixtures: a tiny synthetic world, raw and preprocessed (built once per test session and per xdist worker).

``synthetic_world`` -> SyntheticWorld, the raw data as the generator writes it (seed 0, size "tiny"):
    data_root     Path  the folder that plays ``data/``
    egoexo_root   Path  data_root/egoexo4d_v2: the raw Ego-Exo4D layout (metadata/, annotations/, takes/)
    wtour_videos  list[Path]  data_root/WTour/Walking_Tour_*.mp4 (pinhole, 30 fps)
    imagefolder   Path  data_root/imagefolder with train/ and val/ class folders of JPEGs
    manifest      dict  synthetic_world.json: seed, size, takes [{take_uid, take_name, split, frames, ...}]
    seed, size    int, WorldSize
``processed_world`` -> ProcessedWorld: the same world after both preprocessing scripts (run in-process), i.e.
the synthetic_world fields plus
    frames_root   Path  egoexo_root/processed_data: {take_uid}/aria01_214-1/frame_{i}.jpg, i = 0, 5, 10, ...
    pose_root     Path  data_root/egoexo4d_body_pose: {split}/{take_uid}_{first}-{last}.json
    takes         dict  split -> sorted take uids with processed poses and frames (bouldering left out)
    frame_size    int   side of the undistorted frames (= the video size, 64 px)
Both are session-scoped and share one folder: a test must not modify it (copy it first, see
``copy_raw_world`` in test_preprocess.py). Under pytest-xdist every worker builds its own copy.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
WORLD_SEED = 0


def load_script(name: str):
    """A dataset_preprocess/ script as a module (they are scripts, not a package)."""
    module_name = f"dataset_preprocess_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, REPO / "dataset_preprocess" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


@dataclass(frozen=True)
class SyntheticWorld:
    data_root: Path
    egoexo_root: Path
    wtour_videos: list
    imagefolder: Path
    manifest: dict
    seed: int
    size: object  # internlm.data.synthetic.WorldSize


@dataclass(frozen=True)
class ProcessedWorld(SyntheticWorld):
    frames_root: Path = None
    pose_root: Path = None
    takes: dict = field(default_factory=dict)
    frame_size: int = 0


@pytest.fixture(scope="session")
def synthetic_world(tmp_path_factory) -> SyntheticWorld:
    from internlm.data.synthetic import generate_world, resolve_size

    data_root = tmp_path_factory.mktemp("synthetic_world")
    size = resolve_size("tiny")
    manifest = generate_world(str(data_root), WORLD_SEED, size, workers=1, progress=False)
    return SyntheticWorld(data_root, data_root / "egoexo4d_v2", sorted((data_root / "WTour").glob("*.mp4")),
                          data_root / "imagefolder", manifest, WORLD_SEED, size)


@pytest.fixture(scope="session")
def processed_world(synthetic_world) -> ProcessedWorld:
    world = synthetic_world
    frames_root = world.egoexo_root / "processed_data"
    pose_root = world.data_root / "egoexo4d_body_pose"
    undistorted = load_script("undistort_egovideos").run(str(world.egoexo_root), str(frames_root),
                                                         size=world.size.video_size, workers=1, progress=False,
                                                         echo=False)
    poses = load_script("preprocess_egoexo_body_pose").run(str(world.egoexo_root), str(pose_root), workers=1,
                                                           progress=False, echo=False)
    assert undistorted.counts["failed"] == 0, undistorted.problems.messages
    assert sum(poses.fragments.values()) > 0, poses.problems.messages
    takes = {split: sorted(p.name.rsplit("_", 1)[0] for p in (pose_root / split).glob("*.json"))
             for split in ("train", "val")}
    takes = {split: sorted(set(uids)) for split, uids in takes.items()}
    return ProcessedWorld(**world.__dict__, frames_root=frames_root, pose_root=pose_root, takes=takes,
                          frame_size=world.size.video_size)
