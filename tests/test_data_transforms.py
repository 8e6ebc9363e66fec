"""The OpenCV multi-crop transform, the deterministic resizes and the frame decoders."""

from __future__ import annotations

import dataclasses
import os

import cv2
import numpy as np
import pytest
import torch

from internlm.data.bad_samples import BadSampleError
from internlm.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MultiCropConfig,
    MultiCropTransform,
    Normalizer,
    color_jitter,
    random_resized_crop_box,
    resize_center_crop,
)
from internlm.data.video import VideoFrameReader, jpeg_size, largest_reduction, probe_video, read_image

CFG = MultiCropConfig(init_crop_size=96, global_crop_size=64, local_crop_size=32, local_crops_number=3)


def textured(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A uint8 RGB image with structure at all scales (gradients plus noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // width, y * 255 // height, (x + y) * 127 // (width + height)], -1)
    return np.clip(base + rng.integers(-40, 40, (height, width, 3)), 0, 255).astype(np.uint8)


def box_area(box) -> int:
    return box[2] * box[3]


def test_multicrop_shapes_and_normalisation():
    out = MultiCropTransform(CFG)(textured(120, 160), np.random.default_rng(0))
    assert out["global_crops"].shape == (2, 3, 64, 64) and out["global_crops"].dtype == torch.float32
    assert out["local_crops"].shape == (3, 3, 32, 32)
    lo = min((0 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))
    hi = max((1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))
    for crops in (out["global_crops"], out["local_crops"]):
        assert lo - 1e-5 <= float(crops.min()) and float(crops.max()) <= hi + 1e-5
        assert float(crops.std()) > 0.1  # real content, not a constant
    none = MultiCropTransform(MultiCropConfig(local_crops_number=0, init_crop_size=64, global_crop_size=32))
    assert none(textured(50, 70), np.random.default_rng(0))["local_crops"].shape == (0, 3, 112, 112)


def test_crop_boxes_respect_the_configured_scales():
    transform = MultiCropTransform(CFG)
    height, width = 120, 160
    fractions = {"init": [], "global": [], "local": []}
    for seed in range(150):
        boxes = transform(textured(height, width), np.random.default_rng(seed), return_boxes=True)["boxes"]
        top, left, h, w = boxes["init"]
        assert 0 <= top and top + h <= height and 0 <= left and left + w <= width
        fractions["init"].append(box_area(boxes["init"]) / (height * width))
        for kind in ("global", "local"):
            for top, left, h, w in boxes[kind]:  # in pixels of the 96 x 96 init crop
                assert 0 <= top and top + h <= 96 and 0 <= left and left + w <= 96
                assert 3 / 4 - 0.05 <= w / h <= 4 / 3 + 0.05
                fractions[kind].append(h * w / 96 ** 2)
    # rounding the box sides to pixels moves the area fraction by at most ~2 / side
    for kind, (lo, hi) in (("init", CFG.init_crop_scale), ("global", CFG.global_crops_scale),
                           ("local", CFG.local_crops_scale)):
        got = np.array(fractions[kind])
        assert got.min() >= lo - 0.03 and got.max() <= hi + 0.03, kind
        assert got.min() < lo + 0.1 * (hi - lo) and got.max() > hi - 0.15 * (hi - lo), kind  # the range is used
    assert len(fractions["local"]) == 150 * 3


@pytest.mark.parametrize("flip_p", [0.0, 0.5, 1.0])
def test_flip_probability_and_the_same_random_stream(flip_p):
    """data.flip_prob: how often a crop is mirrored (left half dark, right half bright); the crops drawn do not depend
    on it (one draw per decision either way)."""
    image = np.zeros((96, 96, 3), np.uint8)
    image[:, 48:] = 255
    cfg = MultiCropConfig(init_crop_size=64, init_crop_scale=(0.9, 1.0), global_crop_size=32,
                          global_crops_scale=(0.9, 1.0), local_crops_number=0, normalize=False, flip_p=flip_p)
    mirrored, boxes = [], []
    for seed in range(40):
        out = MultiCropTransform(cfg)(image, np.random.default_rng(seed), return_boxes=True)
        view = out["global_crops"][0].mean(0)  # first global view: blurred, never solarised
        mirrored.append(bool(view[:, :16].mean() > view[:, 16:].mean()))
        boxes.append(out["boxes"]["global"])
    assert sum(mirrored) == {0.0: 0, 1.0: 40}.get(flip_p, sum(mirrored))
    if flip_p == 0.5:
        assert 8 <= sum(mirrored) <= 32
    default = [MultiCropTransform(dataclasses.replace(cfg, flip_p=0.5))(image, np.random.default_rng(seed),
                                                                          return_boxes=True)["boxes"]["global"]
               for seed in range(40)]
    assert boxes == default


def test_random_resized_crop_falls_back_to_a_central_box():
    # a 10 x 1000 strip: no box of ratio 3/4..4/3 and area >= 50% fits -> the largest central 4/3 box
    box = random_resized_crop_box(10, 1000, (0.5, 1.0), np.random.default_rng(0))
    assert box == (0, (1000 - 13) // 2, 10, 13)


def test_same_seed_same_crops_different_seed_different():
    transform, image = MultiCropTransform(CFG), textured(120, 160)
    a = transform(image, np.random.default_rng([3, 1]))
    b = transform(image, np.random.default_rng([3, 1]))
    c = transform(image, np.random.default_rng([3, 2]))
    for key in ("global_crops", "local_crops"):
        assert torch.equal(a[key], b[key])
        assert not torch.allclose(a[key], c[key])


def test_boxes_are_drawn_on_the_source_size_whatever_the_decode_size():
    transform, image = MultiCropTransform(CFG), textured(240, 320)
    half = cv2.resize(image, (160, 120), interpolation=cv2.INTER_AREA)
    full = transform(image, np.random.default_rng(5), return_boxes=True)
    reduced = transform(half, np.random.default_rng(5), source_hw=(240, 320), return_boxes=True)
    assert full["boxes"] == reduced["boxes"]
    # the same region: the crops agree up to resampling differences
    assert float((full["global_crops"] - reduced["global_crops"]).abs().mean()) < 0.15


def test_normalizer_and_resize_center_crop():
    image = np.full((30, 50, 3), (255, 128, 0), np.uint8)
    out = Normalizer(True).to_tensor(image)
    expected = [(v / 255 - m) / s for v, m, s in zip((255, 128, 0), IMAGENET_MEAN, IMAGENET_STD)]
    assert out.shape == (3, 30, 50)
    assert torch.allclose(out[:, 7, 9], torch.tensor(expected), atol=1e-6)
    assert torch.allclose(Normalizer(False).to_tensor(image)[:, 0, 0], torch.tensor([1.0, 128 / 255, 0.0]))
    # shorter side 30 -> 60 (longer 50 -> 100), centre 40 x 40 = resized columns 30..70 = source columns 15..35;
    # a white band at source columns 20..30 lands on crop columns 10..30
    marked = np.zeros((30, 50, 3), np.uint8)
    marked[:, 20:30] = 255
    crop = resize_center_crop(marked, 60, 40, Normalizer(False))
    assert crop.shape == (3, 40, 40)
    assert float(crop[:, :, 12:28].min()) > 0.99
    assert float(crop[:, :, :7].max()) < 0.02 and float(crop[:, :, 33:].max()) < 0.02


def test_color_jitter_keeps_gray_gray_and_moves_colours():
    gray = np.full((8, 8, 3), 100, np.uint8)
    colour = np.zeros((8, 8, 3), np.uint8)
    colour[..., 0] = 200
    changed = 0
    for seed in range(20):
        out = color_jitter(gray, np.random.default_rng(seed))
        assert np.all(out[..., 0] == out[..., 1]) and np.all(out[..., 1] == out[..., 2])  # hue/sat: no effect
        changed += int(not np.array_equal(color_jitter(colour, np.random.default_rng(seed)), colour))
    assert changed == 20


# ----------------------------------------------------------------------------------------- decoding


def a_processed_frame(world) -> str:
    take = world.takes["train"][0]
    return str(world.frames_root / take / "aria01_214-1" / "frame_10.jpg")


def test_read_image_and_reduced_jpeg_decode(processed_world, tmp_path):
    path = a_processed_frame(processed_world)
    full = read_image(path)
    size = processed_world.frame_size
    assert full.rgb.shape == (size, size, 3) and full.source_hw == (size, size)
    assert np.array_equal(full.rgb, cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB))
    assert jpeg_size(np.fromfile(path, np.uint8)) == (size, size)
    half = read_image(path, reduction_for=lambda hw: 2)
    assert half.rgb.shape == (size // 2, size // 2, 3) and half.source_hw == (size, size)
    assert largest_reduction(1115, 300) == 2 and largest_reduction(545, 300) == 1 and largest_reduction(1408, 176) == 8


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "missing"])
def test_bad_images_raise_with_the_file_name(processed_world, tmp_path, damage):
    data = open(a_processed_frame(processed_world), "rb").read()
    path = str(tmp_path / "bad.jpg")
    if damage == "garbage":
        open(path, "wb").write(b"\x00not a jpeg" * 50)
    elif damage == "truncated":
        open(path, "wb").write(data[: len(data) // 2])
    elif damage == "empty":
        open(path, "wb").close()
    with pytest.raises(BadSampleError, match="bad.jpg"):
        read_image(path)


def test_video_frames_by_number_equal_sequential_decoding(synthetic_world):
    video = str(synthetic_world.wtour_videos[0])
    count, height, width, fps = probe_video(video)
    assert (count, fps) == (synthetic_world.size.walk_frames, 30.0)
    assert (height, width) == (synthetic_world.size.walk_height, synthetic_world.size.walk_width)
    capture, sequential = cv2.VideoCapture(video), []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        sequential.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    assert len(sequential) == count
    reader = VideoFrameReader(max_forward_skip=8)
    for frame in (50, 3, 4, 40, count - 1, 0, 70, 20):  # backward seeks, short forward reads, long forward seeks
        assert np.array_equal(reader.read(video, frame).rgb, sequential[frame]), frame
    with pytest.raises(BadSampleError, match=os.path.basename(video)):
        reader.read(video, count + 5)
