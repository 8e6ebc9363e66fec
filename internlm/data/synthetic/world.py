"""Generating a whole synthetic world: Ego-Exo4D-style takes, WalkingTours-style walks, an ImageFolder set.

Everything is a function of (seed, size): each take, walk and class draws from its own random stream
``np.random.default_rng([seed, kind, index, ...])``, so the output does not depend on the number of workers
or on the order tasks finish in.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import shutil
import time
from dataclasses import dataclass
from typing import Iterable, Optional

import numpy as np
from tqdm import tqdm

from .. import egoexo_format as fmt
from ..process_pool import map_in_processes
from .annotations import body_annotations, camera_pose_json, exo_cameras
from .body import CAMERA_TILT, Motion, Outfit, body_solids, random_outfit, simulate
from .camera import calibration_rays, device_calibration_json, fisheye_calibration, focal_for_fov, pinhole_rays
from .imagefolder import class_name, write_class
from .privileged import SCENE_TRUTH_DIR, scene_truth, write_scene_truth
from .raycast import render
from .scene import Scene, Solid, random_scene
from .sizes import WorldSize
from .writers import write_json, write_mp4

GENERATOR_VERSION = 4  # 3: the downloader's layout (takes.json at the root); 4: + the privileged scene truth
MANIFEST_NAME = "synthetic_world.json"
TAKE, WALK = 1, 2  # random-stream codes (3 is the ImageFolder's)
WALK_NAMES = ("SynthAmber", "SynthBirch", "SynthCobalt", "SynthDune", "SynthEmber", "SynthFjord", "SynthGrove",
              "SynthHarbor", "SynthIvory", "SynthJade")
WALK_FOV_DEG = 70.0
MISSING_POSE_TAKE = 1  # this take's camera poses lack a short run of frames, as real takes sometimes do
MISSING_POSE_RUN = 3
SECOND_DEVICE_TAKE = 2  # this take was recorded with "aria02", as some real takes are (the others with "aria01")


@dataclass(frozen=True)
class TakeSpec:
    index: int
    split: str
    take_uid: str
    take_name: str
    task_id: int
    aria: str = fmt.DEFAULT_ARIA  # the Aria device's name in the take's files

    @property
    def root_dir(self) -> str:
        """The take's folder relative to the Ego-Exo4D root, as takes.json's root_dir: takes/{take_name}."""
        return f"takes/{self.take_name}"


def _uid(seed: int, kind: str, index: int) -> str:
    h = hashlib.sha1(f"egoworld-{seed}-{kind}-{index}".encode()).hexdigest()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def plan_takes(seed: int, size: WorldSize) -> list[TakeSpec]:
    """The takes of a world: train, then val, then one bouldering take (in train; preprocessing drops it)."""
    specs = []
    for i in range(size.train_takes + size.val_takes + 1):
        split = "train" if i < size.train_takes or i == size.train_takes + size.val_takes else "val"
        bouldering = i == size.train_takes + size.val_takes
        name = f"egoworld_s{seed}_{'bouldering' if bouldering else 'walk'}_{i:03d}"
        specs.append(TakeSpec(i, split, _uid(seed, "take", i), name, 9000 if bouldering else 1000 + i % 4,
                              "aria02" if i == SECOND_DEVICE_TAKE else fmt.DEFAULT_ARIA))
    return specs


@dataclass
class TakeWorld:
    """Everything needed to render and annotate one take."""

    spec: TakeSpec
    scene: Scene
    motion: Motion
    outfit: Outfit
    calibration: object  # projectaria CameraCalibration at the calibration resolution (what the file holds)
    video_calibration: object  # the same camera rescaled to the video resolution (what the renderer uses)
    rays: np.ndarray  # (S*S, 3) unit rays of the video pixels, camera frame
    valid: np.ndarray  # (S*S,) bool
    video_size: int
    missing_camera_frames: frozenset

    def render_frame(self, frame: int, extra: Iterable[Solid] = ()) -> np.ndarray:
        """(S, S, 3) uint8 RGB fisheye frame ``frame`` with the body, plus optional extra solids (markers)."""
        solids = body_solids(self.motion.joints[frame], float(self.motion.heading[frame]), self.outfit) + list(extra)
        return render(self.scene, self.rays, self.motion.cam_to_world[frame], self.video_size, self.video_size,
                      self.valid, solids)


def build_take(seed: int, spec: TakeSpec, size: WorldSize) -> TakeWorld:
    scene_rng, motion_rng, camera_rng, outfit_rng, gap_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence([seed, TAKE, spec.index]).spawn(5))
    scene = random_scene(scene_rng)
    motion = simulate(scene, motion_rng, size.frames_per_take)
    calibration = fisheye_calibration(size.video_size * size.calibration_scale, camera_rng, f"egoworld-{spec.index}")
    video_calibration = calibration.rescale(np.array([size.video_size] * 2, np.int32), 1.0 / size.calibration_scale)
    rays, valid = calibration_rays(video_calibration)
    missing = frozenset()
    if spec.index == MISSING_POSE_TAKE:
        start = int(gap_rng.integers(size.frames_per_take // 3, 2 * size.frames_per_take // 3))
        missing = frozenset(range(start, start + MISSING_POSE_RUN))
    return TakeWorld(spec, scene, motion, random_outfit(outfit_rng), calibration, video_calibration, rays, valid,
                     size.video_size, missing)


def write_take(egoexo_root: str, seed: int, spec: TakeSpec, size: WorldSize) -> dict:
    """Writes one take's video, calibration, body annotations and camera poses; returns its manifest entry."""
    world = build_take(seed, spec, size)
    folder = os.path.join(egoexo_root, spec.root_dir)
    os.makedirs(folder, exist_ok=True)
    with open(fmt.calibration_sources(folder, spec.aria)[-1], "w") as f:  # {aria}_device_calibration.json
        f.write(device_calibration_json(world.calibration))
    frames = write_mp4(fmt.aria_video_path(folder, spec.aria, "downscaled"),
                       (world.render_frame(i) for i in range(size.frames_per_take)), fmt.FPS, size.video_size,
                       size.video_size)
    annotation_rng = np.random.default_rng([seed, TAKE, spec.index, 7])
    cams = exo_cameras(world.scene)
    manual, automatic = body_annotations(world.motion.joints, annotation_rng, cams)
    write_json(fmt.manual_pose_path(egoexo_root, spec.split, spec.take_uid), manual)
    write_json(fmt.automatic_pose_path(egoexo_root, spec.split, spec.take_uid), automatic)
    f_x, c_x, c_y = world.calibration.get_projection_params()[:3]
    intrinsics = np.array([[f_x, 0, c_x], [0, f_x, c_y], [0, 0, 1]])
    write_json(fmt.camera_pose_path(egoexo_root, spec.split, spec.take_uid),
               camera_pose_json(spec.take_uid, spec.take_name, intrinsics, world.motion.cam_to_world, cams,
                                set(world.missing_camera_frames), spec.aria))
    # privileged, synthetic-only: for the motion evaluation's scene oracle (privileged.py), outside the Ego-Exo4D tree
    write_scene_truth(os.path.dirname(os.path.abspath(egoexo_root)), spec.take_uid, np.arange(size.frames_per_take),
                      scene_truth(world.motion))
    return {"take_uid": spec.take_uid, "take_name": spec.take_name, "split": spec.split, "index": spec.index,
            "aria": spec.aria, "frames": frames, "manual_frames": len(manual),
            "missing_camera_frames": sorted(world.missing_camera_frames)}


def write_walk(wtour_dir: str, seed: int, index: int, size: WorldSize) -> dict:
    """A WalkingTours-style walk: a bigger courtyard with buildings, pinhole camera, no body, no poses."""
    scene_rng, motion_rng = (np.random.default_rng(s) for s in np.random.SeedSequence([seed, WALK, index]).spawn(2))
    scene = random_scene(scene_rng, half_extent=(12.0, 18.0), landmarks=(10, 16), buildings=8)
    motion = simulate(scene, motion_rng, size.walk_frames, look_scale=0.5, reaching=False)
    # a hand-held camera looks ahead: undo the head camera's downward mount (rotate about the camera x axis)
    c, s = math.cos(CAMERA_TILT), math.sin(CAMERA_TILT)
    poses = motion.cam_to_world.copy()
    poses[:, :3, :3] = poses[:, :3, :3] @ np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
    rays = pinhole_rays(size.walk_width, size.walk_height, focal_for_fov(size.walk_width, WALK_FOV_DEG))
    path = os.path.join(wtour_dir, f"Walking_Tour_{WALK_NAMES[index % len(WALK_NAMES)]}"
                                   f"{'' if index < len(WALK_NAMES) else index // len(WALK_NAMES)}.mp4")
    frames = write_mp4(path, (render(scene, rays, poses[i], size.walk_height, size.walk_width)
                              for i in range(size.walk_frames)), fmt.FPS, size.walk_width, size.walk_height)
    return {"path": os.path.basename(path), "frames": frames}


def _run_task(task: tuple) -> tuple[str, dict]:
    kind, args = task
    try:
        import cv2

        cv2.setNumThreads(1)  # one process per core already
    except ImportError:
        pass
    if kind == "take":
        return kind, write_take(*args)
    if kind == "walk":
        return kind, write_walk(*args)
    out_dir, seed, class_index, train_n, val_n, image_size = args
    return kind, {"class": class_name(class_index),
                  "images": write_class(out_dir, seed, class_index, train_n, val_n, image_size)}


def _prepare_out_dir(out_dir: str, overwrite: bool) -> None:
    """Refuses to write over data it did not generate; with ``overwrite`` removes a previous synthetic world."""
    ours = ("egoexo4d_v2", "WTour", "imagefolder", "egoexo4d_body_pose", SCENE_TRUTH_DIR)
    present = [name for name in ours if os.path.exists(os.path.join(out_dir, name))]
    if not present:
        return
    if not os.path.exists(os.path.join(out_dir, MANIFEST_NAME)):
        raise FileExistsError(f"{out_dir} already holds {present} not written by this generator (no {MANIFEST_NAME}); "
                              "choose another --out")
    if not overwrite:
        raise FileExistsError(f"{out_dir} already holds a synthetic world; pass --overwrite to replace it")
    for name in present:
        shutil.rmtree(os.path.join(out_dir, name))
    os.remove(os.path.join(out_dir, MANIFEST_NAME))


def generate_world(out_dir: str, seed: int, size: WorldSize, workers: int = 1, overwrite: bool = False,
                   progress: bool = True) -> dict:
    """Writes the world under ``out_dir`` (layout: see the package docstring); returns the manifest."""
    start = time.time()
    _prepare_out_dir(out_dir, overwrite)
    egoexo_root = os.path.join(out_dir, "egoexo4d_v2")
    specs = plan_takes(seed, size)
    # longest tasks first, so two workers finish together
    tasks = [("walk", (os.path.join(out_dir, "WTour"), seed, i, size)) for i in range(size.walks)]
    tasks += [("take", (egoexo_root, seed, spec, size)) for spec in specs]
    tasks += [("class", (os.path.join(out_dir, "imagefolder"), seed, c, size.images_per_class,
                         size.val_images_per_class, size.image_size)) for c in range(size.classes)]
    results: dict[str, list] = {"take": [], "walk": [], "class": []}
    for kind, entry in tqdm(map_in_processes(_run_task, tasks, workers), total=len(tasks), desc="synthetic world",
                            unit="task", disable=not progress):
        results[kind].append(entry)
    by_uid = {entry["take_uid"]: entry for entry in results["take"]}
    # takes.json at the root, as the downloader's part "metadata" writes it (the fields the code reads, and the
    # capture's cameras Ego-Exo4D's tools find the Aria device in)
    takes_json = [{"take_uid": s.take_uid, "take_name": s.take_name, "task_id": s.task_id, "root_dir": s.root_dir,
                   "duration_sec": round(size.frames_per_take / fmt.FPS, 3),
                   "capture": {"cameras": [{"cam_id": s.aria, "is_ego": True}] +
                               [{"cam_id": f"cam0{i}", "is_ego": False} for i in range(1, 5)]},
                   "is_synthetic": True} for s in specs]
    write_json(os.path.join(egoexo_root, fmt.TAKES_JSON), takes_json, indent=2)
    manifest = {
        "generator": "internlm.data.synthetic", "version": GENERATOR_VERSION, "seed": seed,
        "size": dataclasses.asdict(size),
        "calibration_size": size.video_size * size.calibration_scale,
        "takes": [by_uid[s.take_uid] for s in specs],
        "walks": sorted(results["walk"], key=lambda w: w["path"]),
        "classes": [class_name(c) for c in range(size.classes)],
    }
    write_json(os.path.join(out_dir, MANIFEST_NAME), manifest, indent=2)
    manifest["seconds"] = round(time.time() - start, 1)
    return manifest


def summary_lines(out_dir: str, manifest: dict) -> list[str]:
    size = manifest["size"]
    takes = manifest["takes"]
    per_split = {split: sum(t["split"] == split for t in takes) for split in fmt.SPLITS}
    return [
        f"synthetic world (seed {manifest['seed']}) written to {out_dir} in {manifest.get('seconds', math.nan)} s",
        f"  Ego-Exo4D: {len(takes)} takes ({per_split['train']} train incl. 1 bouldering, {per_split['val']} val), "
        f"{size['frames_per_take']} frames each, fisheye {size['video_size']} px video, calibration "
        f"{manifest['calibration_size']} px, {sum(t['manual_frames'] for t in takes)} manual / "
        f"{sum(t['frames'] for t in takes)} automatic pose frames",
        f"  WalkingTours: {len(manifest['walks'])} walks x {size['walk_frames']} frames "
        f"({size['walk_width']}x{size['walk_height']}) in {os.path.join(out_dir, 'WTour')}",
        f"  ImageFolder: {len(manifest['classes'])} classes x {size['images_per_class']} train / "
        f"{size['val_images_per_class']} val images in {os.path.join(out_dir, 'imagefolder')}",
    ]


def load_manifest(out_dir: str) -> Optional[dict]:
    path = os.path.join(out_dir, MANIFEST_NAME)
    return fmt.read_json(path) if os.path.exists(path) else None
