"""The stage-1 and stage-2 datasets, the loaders and bad input, on the synthetic world's real files."""

from __future__ import annotations

import glob
import itertools
import json
import logging
import math
import os
import shutil
import struct

import cv2
import numpy as np
import pytest
import torch
from conftest import load_script

from internlm.config.schema import DataConfig
from internlm.data.bad_samples import DataBrokenError
from internlm.data.build import build_eval_clip_dataset, build_image_folder, build_train_dataset, build_train_loader
from internlm.data.egoexo_format import processed_frame_path
from internlm.data.image_folder import ImageFolderIndex
from internlm.data.pose_index import load_pose_index
from internlm.data.transforms import MultiCropConfig, MultiCropTransform
from internlm.data.walking_tours import MultiCropFrames, index_walking_tours

STEP = 10  # step_between_clips: 9 samples from a 90-frame walk


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("pose_index_cache"))


def data_cfg(world, **overrides) -> DataConfig:
    """Small crops keep the tests fast; everything else as the real configs."""
    values = dict(train_folder=[str(v) for v in world.wtour_videos], use_egoexo=True,
                  egoexo_frames_folder=str(world.frames_root), egoexo_pose_folder=str(world.pose_root),
                  init_crop_size=48, vid_crop_size=32, local_crop_size=16, local_crops_number=2, pred_img_size=32,
                  step_between_clips=STEP, micro_num=4, num_workers=0, seed=3)
    values.update(overrides)
    return DataConfig(**values)


def clip_cfg(world, **overrides) -> DataConfig:
    overrides.setdefault("step_between_clips", 5)  # a clip may start at every undistorted image (the authors' value)
    return data_cfg(world, dataset_type="EgoExoClips", **overrides)


def merged_json(pose_root, split: str, take: str) -> tuple[dict, list[set]]:
    """frame -> entry of a take's fragments read directly (first fragment wins), and each fragment's frames."""
    merged, spans = {}, []
    paths = sorted(glob.glob(os.path.join(pose_root, split, f"{take}_*.json")),
                   key=lambda p: int(p.rsplit("_", 1)[1].split("-")[0]))
    for path in paths:
        content = json.load(open(path))
        spans.append({int(k) for k in content})
        for key, entry in content.items():
            merged.setdefault(int(key), entry)
    return merged, spans


def expected_windows(world, split: str, frames_root=None, pose_root=None) -> set[tuple[str, int]]:
    """(take, first frame) of every clip, from the files: 20 annotated frames from a multiple of 5, 4 images."""
    frames_root, pose_root = frames_root or world.frames_root, pose_root or world.pose_root
    out = set()
    for take in world.takes[split]:
        merged, _ = merged_json(pose_root, split, take)
        merged = {f: e for f, e in merged.items() if all(
            k in e for k in ("pose", "confidence", "trajectory")) and np.isfinite(np.array(e["pose"], float)).all()}
        images = {int(os.path.basename(p)[6:-4]) for p in glob.glob(os.path.join(frames_root, take, "aria01_214-1",
                                                                                  "frame_*.jpg"))}
        for start in range(0, max(merged) + 1, 5):
            if all(start + i in merged for i in range(20)) and all(start + 5 * t in images for t in range(4)):
                out.add((take, start))
    return out


def windows_of(dataset) -> set[tuple[str, int]]:
    return {(take, int(frames[0])) for take, frames in map(dataset.clip_meta, range(len(dataset)))}


# ------------------------------------------------------------------------------------------- stage 1


def test_stage1_frames_and_multicrop_samples(processed_world):
    w = processed_world
    dataset = build_train_dataset(data_cfg(w))
    egoexo_frames = sum(len(glob.glob(str(w.frames_root / t / "aria01_214-1" / "frame_*.jpg")))
                        for t in w.takes["train"])
    walk_samples = math.ceil(w.size.walk_frames / STEP) * len(w.wtour_videos)
    assert len(dataset) == walk_samples + egoexo_frames
    assert dataset.frames.name(1).endswith("frame 10")  # video frames STEP apart
    assert dataset.frames.name(walk_samples).endswith("frame_0.jpg")
    for index in (2, walk_samples + 3):
        sample = dataset[(index, 100 + index)]
        assert sample["global_crops"].shape == (2, 3, 32, 32) and sample["local_crops"].shape == (2, 3, 16, 16)
        assert (sample["sample_id"], sample["num_skipped"]) == (index, 0)
        assert float(sample["global_crops"].std()) > 0.1
        again, other = dataset[(index, 100 + index)], dataset[(index, 101 + index)]
        assert torch.equal(again["global_crops"], sample["global_crops"])
        assert not torch.allclose(other["global_crops"], sample["global_crops"])


def test_walking_tours_frame_folders(synthetic_world, tmp_path):
    video = str(synthetic_world.wtour_videos[0])
    folder = str(tmp_path / "Walking_Tour_A")
    status, message, written = load_script("extract_frames").extract_video((video, folder, 1, 95))
    assert status == "done", message
    index = index_walking_tours([folder], STEP)
    assert len(index) == math.ceil(written / STEP)
    assert [os.path.basename(index.name(i)) for i in range(3)] == ["frame_0000001.jpg", "frame_0000011.jpg",
                                                                   "frame_0000021.jpg"]
    image = index.load(2).rgb.astype(int)  # video frame 20, through JPEG
    capture = cv2.VideoCapture(video)
    capture.set(cv2.CAP_PROP_POS_FRAMES, 18)
    errors = [np.abs(image - cv2.cvtColor(capture.read()[1], cv2.COLOR_BGR2RGB)).mean() for _ in range(5)]
    assert int(np.argmin(errors)) == 2 and errors[2] < 6, errors  # frames 18..22: frame 20 is the one


def test_walking_tours_as_the_authors_prepare_them(synthetic_world, tmp_path):
    """data/WTour/*.mp4 with frames extracted beside them (ffmpeg -i X.mp4 X/frame_%07d.jpg, or extract_frames.py):
    a listed video whose frames are there is read from them, the same video frames; a folder stands for each walk
    once; the paper's 6 fps sampling follows each video's frame rate."""
    from internlm.data.synthetic.writers import write_mp4
    from internlm.data.walking_tours import Sampling

    extract = load_script("extract_frames")
    wtour = tmp_path / "WTour"
    wtour.mkdir()
    a, b = str(wtour / "Walking_Tour_A.mp4"), str(wtour / "Walking_Tour_B.mp4")
    shutil.copy(synthetic_world.wtour_videos[0], a)  # 30 fps, 90 frames
    capture = cv2.VideoCapture(a)
    frames = [capture.read()[1] for _ in range(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)))]
    write_mp4(b, (f[:, :, ::-1] for f in frames), 60, frames[0].shape[1], frames[0].shape[0])  # 60 fps, 1.5 s
    assert extract.main([a, "--no_progress"]) == 0  # -> WTour/Walking_Tour_A/frame_%07d.jpg
    by_folder = index_walking_tours([str(wtour)], 30)
    by_files = index_walking_tours([a, b], 30)  # the paper configs list the mp4 files
    names = [by_folder.name(i) for i in range(len(by_folder))]
    assert names == [by_files.name(i) for i in range(len(by_files))]
    assert names == [str(wtour / "Walking_Tour_A" / f"frame_{n:07d}.jpg") for n in (1, 31, 61)] + [
        f"{b} frame {n}" for n in (0, 30, 60)]
    os.makedirs(tmp_path / "alone")
    from_video = index_walking_tours([shutil.copy(a, tmp_path / "alone")], 30)  # the same video, no frames beside
    for i in range(3):  # frames read from the folder are the video's frames (through JPEG), not their neighbours
        image = by_folder.load(i).rgb.astype(int)
        errors = [np.abs(image - from_video._video.read(from_video.sources[0].path, f).rgb.astype(int)).mean()
                  for f in (30 * i + 1, 30 * i)]
        assert errors[1] < 6 and errors[1] < errors[0], errors
    # 6 fps: every 5th frame of the 30 fps walk, every 10th of the 60 fps one
    six = index_walking_tours([str(wtour)], Sampling(fps=6.0))
    counts = np.bincount(six.source_ids)
    assert counts.tolist() == [18, 9] and six.frames[18:20].tolist() == [0, 10]
    assert six.name(1).endswith("frame_0000006.jpg")  # the frame folder knows its fps (extract_frames' marker)
    # a folder extracted every 5th frame samples the same video frames; a folder without its video or marker (plain
    # ffmpeg) cannot be sampled by frame rate: reported, not guessed
    extract.main([a, "--out", str(tmp_path / "every5"), "--every", "5", "--no_progress"])
    every5 = str(tmp_path / "every5" / "Walking_Tour_A")
    assert [os.path.basename(index_walking_tours([every5], 30).name(i)) for i in range(3)] == [
        "frame_0000001.jpg", "frame_0000031.jpg", "frame_0000061.jpg"]
    os.remove(os.path.join(every5, ".done"))
    report = index_walking_tours([every5], Sampling(fps=6.0)).report
    assert report.counts == {"frame rate unknown (data.sample_fps needs it: keep the video beside its frame "
                             "folder, or extract with extract_frames.py)": 1}
    odd = index_walking_tours([every5], 12)
    assert "frames 5 apart cannot be sampled every 12: every 2-th file taken" in odd.report.summary()


def test_sample_fps_replaces_the_files_step_on_the_command_line():
    from internlm.config import ConfigError, load_config

    notices = []
    cfg = load_config("configs/dino_pretrain/lr5e-4_tmp004_300m.py", [("data.sample_fps", 6)], notices)
    assert (cfg.data.sample_fps, cfg.data.step_between_clips) == (6.0, None)
    assert "data.step_between_clips follows data.sample_fps: 30 -> None" in notices
    with pytest.raises(ConfigError, match="both say how often WalkingTours is sampled"):
        load_config("configs/dino_pretrain/lr5e-4_tmp004_300m.py", [("data.sample_fps", 6),
                                                                     ("data.step_between_clips", 30)])
    with pytest.raises(ConfigError, match="stage-2 clips start every data.step_between_clips"):
        load_config("configs/joint_train/lr6e-04_tmp004_300m.py", [("data.sample_fps", 6)])


def test_a_folder_of_videos_stands_for_its_videos(synthetic_world):
    videos = sorted(map(str, synthetic_world.wtour_videos))
    folders = {os.path.dirname(v) for v in videos}
    assert len(folders) == 1 and len(videos) >= 1
    by_folder, by_file = index_walking_tours([folders.pop()], STEP), index_walking_tours(videos, STEP)
    assert len(by_folder) == len(by_file) == math.ceil(synthetic_world.size.walk_frames / STEP) * len(videos)
    assert [by_folder.name(i) for i in range(len(by_folder))] == [by_file.name(i) for i in range(len(by_file))]
    assert by_folder.report.total == 0


def test_image_folders(processed_world):
    w = processed_world
    val = build_image_folder(str(w.imagefolder / "val"), resize=40, crop=32)
    classes = sorted(os.listdir(w.imagefolder / "val"))
    assert val.classes == classes and len(val) == len(classes) * w.size.val_images_per_class
    image, label = val[len(val) - 1]
    assert image.shape == (3, 32, 32) and label == len(classes) - 1
    assert val.targets.tolist() == sorted(val.targets.tolist())
    dino = build_train_dataset(data_cfg(w, dataset_type="ImgNetDINO", train_folder=str(w.imagefolder / "train")))
    assert len(dino) == len(classes) * w.size.images_per_class
    assert dino[(0, 0)]["global_crops"].shape == (2, 3, 32, 32)


# ------------------------------------------------------------------------------------------- stage 2


def test_clip_index_finds_every_window(processed_world, cache_dir):
    w = processed_world
    dataset = build_train_dataset(clip_cfg(w), cache_dir=cache_dir)
    windows = windows_of(dataset)
    assert len(windows) == len(dataset) and windows == expected_windows(w, "train")
    # windows crossing a fragment boundary are found
    crossing = 0
    for take, start in windows:
        _, spans = merged_json(w.pose_root, "train", take)
        frames = set(range(start, start + 20))
        crossing += not any(frames <= span for span in spans)
    assert crossing >= 3
    val = build_eval_clip_dataset(clip_cfg(w), cache_dir=cache_dir)
    assert windows_of(val) == expected_windows(w, "val")
    # data.step_between_clips: clips start every 10 frames instead of every 5
    sparse = windows_of(build_train_dataset(clip_cfg(w, step_between_clips=10), cache_dir=cache_dir))
    assert sparse == {(take, start) for take, start in windows if start % 10 == 0} and 0 < len(sparse) < len(windows)


def test_clip_samples_equal_the_files(processed_world, cache_dir):
    w = processed_world
    dataset = build_train_dataset(clip_cfg(w), cache_dir=cache_dir)
    missing_joints = 0
    for i in range(0, len(dataset), 7):
        sample = dataset[(i, i)]
        take, frame_ids = sample["take_uid"], sample["frame_ids"]
        assert sample["frames"].shape == (4, 3, 32, 32) and sample["poses"].shape == (4, 4, 5, 17)
        assert sample["global_crops"].shape == (2, 3, 32, 32) and sample["local_crops"].shape == (2, 3, 16, 16)
        assert frame_ids.dtype == torch.int64 and int(frame_ids[0]) % 5 == 0
        assert torch.diff(frame_ids).tolist() == [5, 5, 5]
        merged, _ = merged_json(w.pose_root, "train", take)
        for t in range(4):
            for j in range(5):
                entry = merged[int(frame_ids[t]) + j]
                pose, confidence = np.array(entry["pose"], np.float32), np.array(entry["confidence"])
                assert np.array_equal(sample["poses"][t, :3, j].T.numpy(), pose)  # (17, 3) x, y, z
                missing = np.all(pose == -1, axis=1)
                assert np.array_equal(sample["poses"][t, 3, j].numpy(), (~missing & (confidence > 0)).astype(float))
                missing_joints += int(missing.sum())
            # the image of step t is frame_{frame_ids[t]}.jpg, resized
            path = processed_frame_path(str(w.frames_root), take, int(frame_ids[t]))
            own = cv2.resize(cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB), (32, 32), interpolation=cv2.INTER_AREA)
            mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
            expected = (torch.from_numpy(own).permute(2, 0, 1) / 255 - mean[:, None, None]) / std[:, None, None]
            assert float((sample["frames"][t] - expected).abs().mean()) < 0.06
    assert missing_joints > 0  # the file has -1 joints, and they got visibility 0 above


def test_eval_clips_have_no_crops_and_no_randomness(processed_world, cache_dir):
    val = build_eval_clip_dataset(clip_cfg(processed_world), cache_dir=cache_dir)
    a, b = val[3], val[3]
    assert set(a) == {"frames", "poses", "take_uid", "frame_ids", "sample_id", "num_skipped", "bad_files"}
    assert torch.equal(a["frames"], b["frames"]) and a["sample_id"] == 3
    assert torch.equal(val[(3, 99)]["frames"], a["frames"])


def test_clip_color_change_gives_the_student_one_colour_change_per_clip(processed_world, cache_dir):
    """data.clip_color_change: student_frames = the clip's frames with the channels reordered, the contrast scaled
    and a shift per channel, the same for every frame (so frame differences are the true ones, reordered and scaled);
    every other key is as without it (it draws last); a new draw, a new change; evaluation clips get none."""
    plain = build_train_dataset(clip_cfg(processed_world), cache_dir=cache_dir)
    changed = build_train_dataset(clip_cfg(processed_world, clip_color_change=True), cache_dir=cache_dir)
    a, b = plain[(5, 11)], changed[(5, 11)]
    assert "student_frames" not in a and set(b) == set(a) | {"student_frames"}
    for key in a:
        assert torch.equal(a[key], b[key]) if torch.is_tensor(a[key]) else a[key] == b[key], key
    frames, student = b["frames"], b["student_frames"]  # (T, 3, P, P)
    fitted = []
    for order in itertools.permutations(range(3)):
        x = frames[:, list(order)]
        design = torch.stack([x, torch.ones_like(x)], dim=-1)  # per channel: student = contrast * x + shift
        for c in range(3):
            sol = torch.linalg.lstsq(design[:, c].reshape(-1, 2).double(), student[:, c].reshape(-1, 1).double())
            fitted.append((order, c, sol.solution.flatten(), (design[:, c].reshape(-1, 2).double() @ sol.solution
                                                               - student[:, c].reshape(-1, 1).double()).abs().max()))
    exact = [f for f in fitted if f[3] < 1e-5]
    assert len({f[1] for f in exact}) == 3  # every channel an exact affine map of one input channel, all frames
    contrasts = {round(float(f[2][0]), 5) for f in exact}
    assert len(contrasts) == 1 and 0.6 <= contrasts.pop() <= 1.4  # one contrast for the whole clip
    assert not torch.allclose(student, frames, atol=1e-3)
    assert not torch.allclose(changed[(5, 12)]["student_frames"], student, atol=1e-3)  # another draw of clip 5
    assert torch.equal(changed[(5, 11)]["student_frames"], student)  # the draw decides: resumable
    val = build_eval_clip_dataset(clip_cfg(processed_world, clip_color_change=True), cache_dir=cache_dir)
    assert "student_frames" not in val[3]


def test_pose_index_cache_is_reused_and_refreshed(processed_world, tmp_path):
    split_dir = str(tmp_path / "train")
    shutil.copytree(processed_world.pose_root / "train", split_dir)
    first = load_pose_index(split_dir, cache_dir=str(tmp_path / "cache"))
    assert isinstance(first.poses, np.memmap)
    again = load_pose_index(split_dir, cache_dir=str(tmp_path / "cache"))
    assert np.array_equal(first.poses, again.poses) and len(os.listdir(tmp_path / "cache")) == 2  # folder + lock
    path = glob.glob(os.path.join(split_dir, "*_0-*.json"))[0]
    content = json.load(open(path))
    del content["0"]  # not in an overlap: the take loses one frame
    json.dump(content, open(path, "w"))
    changed = load_pose_index(split_dir, cache_dir=str(tmp_path / "cache"))
    assert len(changed.frames) == len(first.frames) - 1


# ----------------------------------------------------------------------------------------- loaders


def batches(loader, n: int) -> list[dict]:
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == n:
            return out
    return out


def assert_same_batches(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            assert torch.equal(x[key], y[key]) if torch.is_tensor(x[key]) else x[key] == y[key], key


@pytest.mark.parametrize("stage", [1, 2])
def test_two_workers_give_the_same_batches_as_none(processed_world, cache_dir, stage):
    w = processed_world
    cfg = data_cfg(w) if stage == 1 else clip_cfg(w)
    dataset = build_train_dataset(cfg, cache_dir=cache_dir)
    serial = batches(build_train_loader(cfg, 0, 1, 0, dataset=dataset), 3)
    cfg.num_workers = 2
    parallel = batches(build_train_loader(cfg, 0, 1, 0, dataset=dataset), 3)
    assert_same_batches(serial, parallel)
    assert serial[0]["global_crops"].shape == (4, 2, 3, 32, 32)
    if stage == 2:
        assert serial[0]["poses"].shape == (4, 4, 4, 5, 17) and len(serial[0]["take_uid"]) == 4


def test_loader_resumes_and_splits_over_ranks(processed_world, cache_dir):
    cfg = clip_cfg(processed_world)
    dataset = build_train_dataset(cfg, cache_dir=cache_dir)
    straight = batches(build_train_loader(cfg, 0, 1, 0, dataset=dataset), 4)
    resumed = batches(build_train_loader(cfg, 0, 1, 2 * cfg.micro_num, dataset=dataset), 2)
    assert_same_batches(straight[2:], resumed)
    cfg.micro_num = 2  # two ranks of 2 = one rank of 4
    ranks = [batches(build_train_loader(cfg, r, 2, 0, dataset=dataset), 4) for r in range(2)]
    for step in range(4):
        ids = torch.cat([ranks[0][step]["sample_id"], ranks[1][step]["sample_id"]])
        assert torch.equal(ids, straight[step]["sample_id"])
        assert torch.equal(ranks[1][step]["frames"], straight[step]["frames"][2:])


# --------------------------------------------------------------------------------------- bad input


@pytest.fixture
def private_world(processed_world, tmp_path):
    """A copy of the processed frames, poses and walks that a test may damage."""
    w = processed_world
    shutil.copytree(w.frames_root, tmp_path / "frames")
    shutil.copytree(w.pose_root, tmp_path / "poses")
    videos = [shutil.copy(v, tmp_path / v.name) for v in w.wtour_videos]
    return data_cfg(w, egoexo_frames_folder=str(tmp_path / "frames"), egoexo_pose_folder=str(tmp_path / "poses"),
                    train_folder=videos)


def test_corrupt_jpeg_is_replaced_by_random_valid_samples_and_reported_once(processed_world, private_world, caplog):
    dataset = build_train_dataset(private_world)
    index = len(dataset) - 5
    path = dataset.frames.name(index)
    open(path, "wb").write(b"\xff\xd8 broken" * 30)
    with caplog.at_level(logging.WARNING, logger="internlm.data"):
        samples = [dataset[(index, draw)] for draw in range(6)]
    used = [s["sample_id"] for s in samples]
    assert index not in used and len(set(used)) > 1  # random replacements, not always the next index
    assert all(s["num_skipped"] == 1 and s["bad_files"].startswith(f"{path}\t") for s in samples)
    assert float(samples[0]["global_crops"].std()) > 0.1  # the replacement, not zeros
    assert sum(path in r.getMessage() for r in caplog.records) == 1 and path in dataset.bad_files.reasons
    fresh = build_train_dataset(private_world)[(index, 0)]  # another worker, or a resumed run: the same sample
    assert fresh["sample_id"] == used[0] and torch.equal(fresh["global_crops"], samples[0]["global_crops"])
    assert dataset[(index - 1, 0)]["num_skipped"] == 0


def test_truncated_jpeg_shared_by_overlapping_clips(processed_world, private_world, tmp_path, caplog):
    """Clips 0, 1, 2, ... share the frame: each draw gets its own random replacement without the frame, and the
    file is read and reported once."""
    cfg = clip_cfg(processed_world, egoexo_frames_folder=private_world.egoexo_frames_folder,
                   egoexo_pose_folder=private_world.egoexo_pose_folder)
    dataset = build_train_dataset(cfg, cache_dir=str(tmp_path / "cache"))
    take, frames = dataset.clip_meta(0)
    path = processed_frame_path(cfg.egoexo_frames_folder, take, int(frames[2]))
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    users = [i for i in range(len(dataset)) if path in dataset.image_files(i)]
    assert users[0] == 0 and users == list(range(len(users))) and len(users) >= 3
    with caplog.at_level(logging.WARNING, logger="internlm.data"):
        samples = [dataset[(i, 100 + i)] for i in users]
    replacements = [s["sample_id"] for s in samples]
    assert len(set(replacements)) > 1 and not set(replacements) & set(users)  # spread out, never the bad frame
    assert all(s["num_skipped"] >= 1 and s["bad_files"].startswith(f"{path}\ttruncated JPEG") for s in samples)
    assert sum(path in r.getMessage() for r in caplog.records) == 1
    assert float(samples[0]["frames"].std()) > 0.1


def test_missing_frame_nan_pose_and_missing_key_are_left_out_of_the_index(processed_world, private_world, tmp_path,
                                                                         caplog):
    w = processed_world
    cfg = clip_cfg(w, egoexo_frames_folder=private_world.egoexo_frames_folder,
                   egoexo_pose_folder=private_world.egoexo_pose_folder)
    take = w.takes["train"][-1]
    os.remove(processed_frame_path(cfg.egoexo_frames_folder, take, 30))
    fragment = sorted(glob.glob(os.path.join(cfg.egoexo_pose_folder, "train", f"{take}_0-*.json")))[0]
    content = json.load(open(fragment))
    content["62"]["pose"][4][1] = float("nan")
    del content["71"]["confidence"]
    json.dump(content, open(fragment, "w"))
    with caplog.at_level(logging.WARNING, logger="internlm.data"):
        dataset = build_train_dataset(cfg, cache_dir=str(tmp_path / "cache"))
    summary = "\n".join(r.getMessage() for r in caplog.records)
    assert "missing frame file: 1" in summary and "NaN pose: 1" in summary and "missing key: 1" in summary
    assert "frame_30.jpg" in summary and os.path.basename(fragment) in summary
    got = windows_of(dataset)
    expected = expected_windows(w, "train", cfg.egoexo_frames_folder, cfg.egoexo_pose_folder)
    assert got == expected
    lost = expected_windows(w, "train") - got
    # frame 30's image: clips from 15 to 30; pose frames 62 and 71: clips from 45 to 70
    assert lost == {(take, s) for s in (15, 20, 25, 30, 45, 50, 55, 60, 65, 70)}
    assert dataset[(0, 0)]["num_skipped"] == 0


def faststart(mp4: bytes) -> bytes:
    """Move the moov box in front of mdat (shifting the chunk offsets), as streaming mp4s are laid out:
    a truncated copy then still opens and its late frames fail to decode."""
    def boxes(data, start, end):
        while start + 8 <= end:
            size, kind = struct.unpack(">I4s", data[start:start + 8])
            yield kind, start, size
            start += size

    top = {kind: (pos, size) for kind, pos, size in boxes(mp4, 0, len(mp4))}
    (moov_at, moov_size), (mdat_at, _) = top[b"moov"], top[b"mdat"]
    moov = bytearray(mp4[moov_at:moov_at + moov_size])

    def shift(start, end):
        for kind, pos, size in boxes(moov, start, end):
            if kind in (b"trak", b"mdia", b"minf", b"stbl"):
                shift(pos + 8, pos + size)
            elif kind == b"stco":
                for k in range(struct.unpack(">I", moov[pos + 12:pos + 16])[0]):
                    at = pos + 16 + 4 * k
                    moov[at:at + 4] = struct.pack(">I", struct.unpack(">I", moov[at:at + 4])[0] + moov_size)

    shift(8, moov_size)
    return mp4[:mdat_at] + bytes(moov) + mp4[mdat_at:moov_at] + mp4[moov_at + moov_size:]


def test_truncated_videos(processed_world, tmp_path, caplog):
    data = open(processed_world.wtour_videos[0], "rb").read()
    cut = str(tmp_path / "cut.mp4")  # index at the end: cannot open at all -> left out while indexing
    open(cut, "wb").write(data[: len(data) * 6 // 10])
    streamable = str(tmp_path / "streamable.mp4")  # index in front: opens, the late frames are gone
    open(streamable, "wb").write(faststart(data)[: len(data) * 6 // 10])
    cfg = data_cfg(processed_world, use_egoexo=False, train_folder=[cut, streamable])
    with caplog.at_level(logging.WARNING, logger="internlm.data"):
        dataset = build_train_dataset(cfg)
        assert len(dataset) == math.ceil(processed_world.size.walk_frames / STEP)  # only the streamable one
        assert any("cut.mp4" in r.getMessage() and "cannot open" in r.getMessage() for r in caplog.records)
        first = dataset[(0, 0)]
        last = dataset[(len(dataset) - 1, 0)]
        replacement = dataset[(last["sample_id"], 0)]
    assert (first["sample_id"], first["num_skipped"]) == (0, 0)
    assert last["num_skipped"] >= 1 and "streamable.mp4" in last["bad_files"]  # frame 80 is past the cut...
    assert replacement["num_skipped"] == 0  # ... and was replaced by a frame that decodes
    assert any("streamable.mp4" in r.getMessage() and "frame 80" in r.getMessage() for r in caplog.records)


def test_all_bad_raises_a_clear_error(synthetic_world, tmp_path):
    root = tmp_path / "broken"
    shutil.copytree(synthetic_world.imagefolder / "val", root)
    for path in glob.glob(str(root / "*" / "*")):
        open(path, "wb").write(b"junk")
    dataset = MultiCropFrames(ImageFolderIndex(str(root)), MultiCropTransform(MultiCropConfig()), 0, "broken set")
    with pytest.raises(DataBrokenError, match="51 consecutive samples"):
        dataset[(0, 0)]


# ------------------------------------------------------------------------------------ configured data roots


@pytest.mark.parametrize("key", ["egoexo_frames_folder", "egoexo_pose_folder", "train_folder"])
def test_a_configured_data_root_that_does_not_exist_is_an_error(processed_world, tmp_path, key):
    """A typo in one root must not train on what the others hold."""
    missing = str(tmp_path / "nonexistent")
    value = [str(processed_world.wtour_videos[0]), missing] if key == "train_folder" else missing
    with pytest.raises(FileNotFoundError, match=f"data.{key}.*{missing}.* does not exist"):
        build_train_dataset(data_cfg(processed_world, **{key: value}))


def test_a_data_root_that_yields_nothing_is_an_error_naming_it(processed_world, tmp_path):
    w = processed_world
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=f"data.train_folder.*{empty}.*yields no samples"):
        build_train_dataset(data_cfg(w, train_folder=[str(w.wtour_videos[0]), str(empty)]))
    with pytest.raises(ValueError, match=f"data.egoexo_frames_folder.*{empty}.*yields no samples"):
        build_train_dataset(data_cfg(w, egoexo_frames_folder=str(empty)))
    with pytest.raises(ValueError, match=f"data.egoexo_frames_folder.*{empty}.*yields no samples"):
        build_train_dataset(clip_cfg(w, egoexo_frames_folder=str(empty)), cache_dir=str(tmp_path / "cache"))
