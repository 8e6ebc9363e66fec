"""The Ego-Exo4D tree as its downloader writes it (docs/data_formats.md, "The download"): takes.json at the root,
take folders by name, downscaled and full-resolution videos, both VRS flavours, any Aria device, older trees, and a
step that finds nothing to do naming the part to download."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import cv2
import numpy as np
import pytest
from conftest import load_script

from internlm.data import egoexo_format as fmt
from internlm.data.synthetic import build_take, plan_takes
from internlm.data.synthetic.writers import write_mp4

undistort = load_script("undistort_egovideos")
body_pose = load_script("preprocess_egoexo_body_pose")


def kept_specs(world):
    return [s for s in plan_takes(world.seed, world.size) if not fmt.is_dropped_take(s.take_name)]


def write_full_resolution(world, root: str, spec, scale: int = 2) -> str:
    """The take rendered again at ``scale`` times the video size (same scene, motion and calibration file), written
    where part "takes" puts it: frame_aligned_videos/{aria}_214-1.mp4 -> its path."""
    size = dataclasses.replace(world.size, video_size=world.size.video_size * scale,
                               calibration_scale=world.size.calibration_scale // scale)
    take = build_take(world.seed, spec, size)
    path = fmt.aria_video_path(os.path.join(root, spec.root_dir), spec.aria, "full")
    write_mp4(path, (take.render_frame(i) for i in range(size.frames_per_take)), fmt.FPS, size.video_size,
              size.video_size)
    return path


@pytest.fixture(scope="module")
def download(synthetic_world, tmp_path_factory):
    """A private copy of the world's Ego-Exo4D tree in the download layout, with the second kept take also at full
    resolution (part "takes") and the third at full resolution only."""
    w = synthetic_world
    root = str(tmp_path_factory.mktemp("download") / "egoexo4d_v2")
    shutil.copytree(w.egoexo_root, root, ignore=shutil.ignore_patterns("processed_data"))
    specs = kept_specs(w)
    both, full_only = specs[1], specs[2]
    for spec in (both, full_only):
        write_full_resolution(w, root, spec)
    os.remove(fmt.aria_video_path(os.path.join(root, full_only.root_dir), full_only.aria, "downscaled"))
    return root, specs


def _marker(out: str, take_uid: str) -> dict:
    with open(os.path.join(fmt.processed_frames_dir(out, take_uid), fmt.DONE_MARKER)) as f:
        return json.load(f)


def _frames(out: str, take_uid: str) -> np.ndarray:
    """The take's undistorted frames, slightly blurred: renders at two resolutions differ in their aliasing (the
    raycaster samples pixel centres), not in where things are."""
    folder = fmt.processed_frames_dir(out, take_uid)
    names = sorted((n for n in os.listdir(folder) if n.endswith(".jpg")), key=lambda n: int(n[6:-4]))
    return np.stack([cv2.GaussianBlur(cv2.imread(os.path.join(folder, n)).astype(float), (5, 5), 1.0)
                     for n in names])


def test_full_resolution_and_downscaled_videos_give_the_same_frames(download, synthetic_world, tmp_path):
    root, specs = download
    both, full_only = specs[1], specs[2]
    assert full_only.aria == "aria02"  # the world's second device: its files are found by the capture's cameras
    side = synthetic_world.size.video_size
    down, full = str(tmp_path / "down"), str(tmp_path / "full")
    report = undistort.run(root, down, size=side, workers=2, progress=False, echo=False)
    assert report.counts == {"done": len(specs)} and report.not_downloaded == 0
    undistort.run(root, full, size=side, workers=1, progress=False, echo=False, prefer="full",
                  take_uids=[both.take_uid, full_only.take_uid])
    # which video each take was read from, as the completion marker records it
    assert _marker(down, both.take_uid)["video_kind"] == "downscaled"
    assert _marker(down, full_only.take_uid)["video_kind"] == "full"  # the only one it has
    assert _marker(full, both.take_uid)["video_kind"] == "full"
    assert _marker(full, both.take_uid)["video_size"] == [2 * side] * 2
    assert _marker(full, both.take_uid)["calibration_file"].endswith(f"{both.aria}_device_calibration.json")
    # the calibration is rescaled to each video: the same pinhole focal, the same undistorted pictures
    assert _marker(full, both.take_uid)["focal"] == pytest.approx(_marker(down, both.take_uid)["focal"], rel=1e-9)
    a, b = _frames(down, both.take_uid), _frames(full, both.take_uid)
    same = np.abs(a - b).mean()
    other_time = np.abs(a[1:] - b[:-1]).mean()  # the same take, one kept frame (5 video frames) apart
    assert same < 5.0 and same < 0.3 * other_time, (same, other_time)
    # the full-resolution-only take: its frames are the downscaled-video frames of the same take
    reference = str(tmp_path / "reference")
    shutil.copytree(root, reference, ignore=shutil.ignore_patterns("processed_data"))
    folder = os.path.join(reference, full_only.root_dir)
    os.remove(fmt.aria_video_path(folder, full_only.aria, "full"))
    size = synthetic_world.size
    write_mp4(fmt.aria_video_path(folder, full_only.aria, "downscaled"),
              (build_take(synthetic_world.seed, full_only, size).render_frame(i) for i in range(size.frames_per_take)),
              fmt.FPS, side, side)
    undistort.run(reference, str(tmp_path / "ref_out"), size=side, workers=1, progress=False, echo=False,
                  take_uids=[full_only.take_uid])
    assert np.abs(_frames(down, full_only.take_uid) - _frames(str(tmp_path / "ref_out"), full_only.take_uid)).mean() \
        < 5.0


def test_older_trees_are_read_too(download, synthetic_world, tmp_path):
    """metadata/takes.json (the authors' scripts) and take folders named by take_uid; a take of takes.json that was
    not downloaded is counted, not an error."""
    root, specs = download
    old = str(tmp_path / "old")
    shutil.copytree(root, old, ignore=shutil.ignore_patterns("processed_data"))
    os.makedirs(os.path.join(old, "metadata"))
    os.replace(os.path.join(old, "takes.json"), os.path.join(old, "metadata", "takes.json"))
    by_uid, missing = specs[0], specs[3]
    os.rename(os.path.join(old, by_uid.root_dir), os.path.join(old, "takes", by_uid.take_uid))
    shutil.rmtree(os.path.join(old, missing.root_dir))
    assert fmt.takes_json_path(old) == os.path.join(old, "metadata", "takes.json")
    report = undistort.run(old, str(tmp_path / "out"), size=32, workers=2, progress=False, echo=False)
    assert report.counts == {"done": len(specs) - 1} and report.not_downloaded == 1
    assert os.path.isdir(fmt.processed_frames_dir(str(tmp_path / "out"), by_uid.take_uid))
    poses = body_pose.run(old, str(tmp_path / "poses"), progress=False, echo=False)
    assert sum(poses.takes.values()) == len(specs)  # the labels do not need the take folders


def test_aria_device_rule():
    """As Ego-Exo4D's tools: the capture's ego camera named aria*, narrowed by frame_aligned_videos; else the
    device the folder's files name; else aria01."""
    take = {"capture": {"cameras": [{"cam_id": "cam01", "is_ego": False}, {"cam_id": "aria03", "is_ego": True}]}}
    assert fmt.aria_device(take) == "aria03"
    two = {"capture": {"cameras": [{"cam_id": "aria01", "is_ego": "true"}, {"cam_id": "aria02", "is_ego": True}]},
           "frame_aligned_videos": {"aria02": {}, "cam01": {}}}
    assert fmt.aria_device(two) == "aria02"
    assert fmt.aria_device({}) == "aria01"


def test_calibration_sources_in_order(download, tmp_path):
    """{aria}_noimagestreams.vrs, then {aria}.vrs (each read by projectaria-tools' VRS provider: an unreadable one
    is an error naming it, never silently passed over), then the synthetic calibration JSON; none: the parts."""
    root, specs = download
    spec = specs[0]
    folder = str(tmp_path / "take")
    shutil.copytree(os.path.join(root, spec.root_dir), folder)
    json_file = os.path.join(folder, f"{spec.aria}_device_calibration.json")
    assert fmt.load_aria_calibration(folder, spec.aria)[1] == json_file
    for name in (f"{spec.aria}.vrs", f"{spec.aria}_noimagestreams.vrs"):
        with open(os.path.join(folder, name), "wb") as f:
            f.write(b"not a VRS file")
        with pytest.raises(ValueError, match=name):
            fmt.load_aria_calibration(folder, spec.aria)
    for name in (f"{spec.aria}_noimagestreams.vrs", f"{spec.aria}.vrs", os.path.basename(json_file)):
        os.remove(os.path.join(folder, name))
    with pytest.raises(FileNotFoundError, match="take_vrs_noimagestream"):
        fmt.load_aria_calibration(folder, spec.aria)


def test_nothing_to_do_names_the_part_to_download(download, tmp_path, capsys):
    root, specs = download
    tree = str(tmp_path / "tree")
    shutil.copytree(root, tree, ignore=shutil.ignore_patterns("processed_data", "*.mp4", "*_calibration.json"))
    # no takes.json: both steps name part metadata
    os.replace(os.path.join(tree, "takes.json"), str(tmp_path / "takes.json"))
    assert undistort.main(["--root", tree, "--no_progress", "--workers", "1"]) == 1
    assert body_pose.main(["--root", tree, "--out", str(tmp_path / "p"), "--no_progress"]) == 1
    err = capsys.readouterr().err
    assert err.count(f"egoexo -o {tree} --parts metadata") == 2, err
    os.replace(str(tmp_path / "takes.json"), os.path.join(tree, "takes.json"))
    # take folders without videos: downscaled_takes/448; with videos but no calibration: take_vrs_noimagestream
    assert undistort.main(["--root", tree, "--no_progress", "--workers", "1"]) == 1
    assert "no take has an Aria video: download part downscaled_takes/448" in capsys.readouterr().err
    for spec in specs:
        write_mp4(fmt.aria_video_path(os.path.join(tree, spec.root_dir), spec.aria), [np.zeros((8, 8, 3), np.uint8)],
                  fmt.FPS, 8, 8)
    assert undistort.main(["--root", tree, "--no_progress", "--workers", "1"]) == 1
    assert "no take has a calibration: download part take_vrs_noimagestream" in capsys.readouterr().err
    # no take folder at all: the videos' part
    shutil.rmtree(os.path.join(tree, "takes"))
    assert undistort.main(["--root", tree, "--no_progress", "--workers", "1"]) == 1
    assert f"download the Aria videos, part downscaled_takes/448 (egoexo -o {tree}" in capsys.readouterr().err
    # no body-pose labels: part annotations
    shutil.rmtree(os.path.join(tree, "annotations"))
    assert body_pose.main(["--root", tree, "--out", str(tmp_path / "p"), "--no_progress"]) == 1
    assert "no body-pose labels" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_readme_on_the_download_layout_end_to_end(synthetic_world, tmp_path):
    """The README's data section, followed literally (default paths, in a working directory holding data/), on a tree
    in the downloader's layout: takes.json at the root beside the other metadata files, take folders by name, an
    aria02 take, one take with downscaled and full-resolution videos, one with the full-resolution video only, a
    SLAM video beside the RGB one, a bouldering take; WalkingTours with frames extracted beside the video. Then the
    laptop command of both 300M paper configs (stage 2 from stage 1 through save_ckpt/, as the files chain them),
    the HF export and the three evaluations.

    Calibration: projectaria-tools cannot write an Aria VRS, and the VRS package's writer (pip vrs) writes only its
    sample stream, which the Aria data provider refuses; so every take's calibration comes from the synthetic
    world's {aria}_device_calibration.json (the factory-calibration JSON a VRS carries). The VRS flavours' names and
    order are test_calibration_sources_in_order's."""
    from eval_helpers import run_script

    w = synthetic_world
    work = tmp_path / "work"
    root = work / "data" / "egoexo4d_v2"
    shutil.copytree(w.egoexo_root, root, ignore=shutil.ignore_patterns("processed_data"))
    (root / "captures.json").write_text("[]")  # part metadata writes more than takes.json
    specs = kept_specs(w)
    both, full_only, slam = specs[0], specs[2], specs[3]
    for spec in (both, full_only):
        write_full_resolution(w, str(root), spec)
    os.remove(fmt.aria_video_path(str(root / full_only.root_dir), full_only.aria, "downscaled"))
    slam_video = fmt.aria_video_path(str(root / slam.root_dir), slam.aria).replace("_214-1.mp4", "_1201-1.mp4")
    write_mp4(slam_video, [np.full((16, 16, 3), 255, np.uint8)] * 30, fmt.FPS, 16, 16)  # must not be read
    shutil.copytree(os.path.dirname(w.wtour_videos[0]), work / "data" / "WTour")
    shutil.copytree(w.imagefolder, work / "data" / "imagefolder")
    env = {"EGOAGENT_CACHE_DIR": str(tmp_path / "cache"), "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
    repo = env["PYTHONPATH"]

    def run(script: str, *args: str, timeout: float = 600):
        return run_script([os.path.join(repo, script), *args], cwd=str(work), timeout=timeout, env_extra=env)

    walks = sorted(str(p.relative_to(work)) for p in (work / "data" / "WTour").glob("*.mp4"))
    run("dataset_preprocess/extract_frames.py", *walks)
    run("dataset_preprocess/undistort_egovideos.py", "--workers", "2")
    run("dataset_preprocess/preprocess_egoexo_body_pose.py")
    # processed frames (448 px, the default) and poses for every usable take; the bouldering take left out
    frames_root = str(root / "processed_data")
    assert sorted(os.listdir(frames_root)) == sorted(s.take_uid for s in specs)
    for spec in specs:
        marker = _marker(frames_root, spec.take_uid)
        assert marker["size"] == 448 and marker["frames"] == -(-w.size.frames_per_take // 5)
        assert marker["video_kind"] == ("full" if spec is full_only else "downscaled")
        assert marker["video"].endswith(f"{spec.aria}_214-1.mp4")
    poses = work / "data" / "egoexo4d_body_pose"
    assert {p.name.rsplit("_", 1)[0] for p in poses.glob("*/*.json")} == {s.take_uid for s in specs}

    tiny = ["--opt", "model.flavor=tiny", "--opt", "data.total_steps=1", "--opt", "data.micro_num=4"]
    run("train.py", "--config", os.path.join(repo, "configs/dino_pretrain/lr5e-4_tmp004_300m.py"), *tiny,
        "--opt", "data.train_folder=['data/WTour']")
    stage2 = os.path.join(repo, "configs/joint_train/lr6e-04_tmp004_300m.py")
    proc = run("train.py", "--config", stage2, *tiny)
    log = proc.stdout + proc.stderr
    assert "initialised model from save_ckpt/dino_lr5e-4_tmp004_300M/1" in log
    run_folder = "save_ckpt/joint_lr6e-04_tmp004_300M"
    assert os.path.exists(work / run_folder / "1" / "COMPLETE")

    run("tools/convert2hf_dino_conv_stem_cls.py", "--src_folder", run_folder, "--tgt_folder", "hf_models/tiny",
        "--remove_vq_embed")
    run("eval_knn_conv_stem_cls.py", "--pretrained_weights", "hf_models/tiny", "--data_path", "data/imagefolder",
        "--imgnet", "100", "--num_workers", "0", "--output", "knn.json")
    knn = json.loads((work / "knn.json").read_text())
    assert knn["num_val"] == len(list((work / "data" / "imagefolder" / "val").glob("*/*.jpg"))) > 0
    run("eval_feature_retrieval.py", "--config", stage2, "--eval_iters", "2", "--batch_size", "4", "--num_workers",
        "0", "--output_dir", "retrieval")
    retrieval = json.loads((work / "retrieval" / "retrieval.json").read_text())
    assert retrieval["rows"]["oracle"]["top1"] >= 99.0 and retrieval["num_queries"] > 0
    run("eval_3dposes.py", "--config", stage2, "--eval_iters", "2", "--batch_size", "4", "--num_workers", "0",
        "--output_dir", "motion")
    motion = json.loads((work / "motion" / "motion.json").read_text())
    assert motion["num_clips"] > 0 and 0 < motion["model"]["mpjpe_30fps"] < 1000
