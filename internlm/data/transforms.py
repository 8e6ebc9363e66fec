"""Image transforms with OpenCV/numpy: the DoRA + DINO multi-crop, resize-to-square and resize-center-crop.

All randomness comes from an explicit ``numpy.random.Generator`` so a sample's augmentation depends only on
its seed (never on the worker that made it). Images are uint8 (H, W, 3) RGB arrays until the final
normalisation to float32 CHW.

Interpolation: bicubic as DINO's crops, after antialiasing 2x box-filter halvings when shrinking (see ``resize``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# RandomResizedCrop's aspect-ratio range and number of tries (as torchvision and DINO use it).
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
CROP_TRIES = 10
# DINO's photometric augmentations.
FLIP_P = 0.5
JITTER_P = 0.8
BRIGHTNESS, CONTRAST, SATURATION, HUE = 0.4, 0.4, 0.2, 0.1
GRAYSCALE_P = 0.2
BLUR_SIGMA = (0.1, 2.0)
SOLARIZE_THRESHOLD = 128  # PIL's ImageOps.solarize: pixels >= 128 are inverted

Box = tuple[int, int, int, int]  # (top, left, height, width) in pixels of the image it was drawn on


def random_resized_crop_box(height: int, width: int, scale: tuple[float, float], rng: np.random.Generator,
                            ratio: tuple[float, float] = CROP_RATIO) -> Box:
    """The box of torchvision's RandomResizedCrop: area fraction ~ U(scale), log aspect ~ U(log ratio).

    After CROP_TRIES boxes that do not fit, falls back to the largest central box within ``ratio``.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(CROP_TRIES):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def resize(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """(H, W, C) -> (out_h, out_w, C), bicubic (DINO's interpolation).

    Shrinking by 2x or more first halves the image with the exact 2x2 box filter (antialiasing, like PIL's
    resampling; OpenCV's fast path: ~10x faster than INTER_AREA at other ratios), then the bicubic step is < 2x.
    """
    while image.shape[0] >= 2 * out_h and image.shape[1] >= 2 * out_w:
        h2, w2 = image.shape[0] // 2, image.shape[1] // 2
        image = cv2.resize(image[:2 * h2, :2 * w2], (w2, h2), interpolation=cv2.INTER_AREA)
    if image.shape[:2] == (out_h, out_w):
        return image
    return cv2.resize(image, (out_w, out_h), interpolation=cv2.INTER_CUBIC)


def crop_resize(image: np.ndarray, box: Box, size: int, scale_hw: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
    """Crop ``box`` (given in a frame ``scale_hw`` times larger than ``image``) and resize to size x size."""
    top, left, h, w = box
    sy, sx = scale_hw
    y0, x0 = int(round(top / sy)), int(round(left / sx))
    y1 = min(image.shape[0], max(y0 + 1, int(round((top + h) / sy))))
    x1 = min(image.shape[1], max(x0 + 1, int(round((left + w) / sx))))
    return resize(image[y0:y1, x0:x1], size, size)


# ------------------------------------------------------------------------------------ photometric, uint8
# On uint8 with saturating OpenCV arithmetic, as torchvision does it on PIL images (also uint8 between steps).

_SOLARIZE_LUT = np.where(np.arange(256) >= SOLARIZE_THRESHOLD, 255 - np.arange(256), np.arange(256)).astype(np.uint8)
_GRAY_WEIGHTS = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601 luma, as PIL's convert("L")


def _scale_shift(img: np.ndarray, scale: float, shift: float) -> np.ndarray:
    """saturate(img * scale + shift), uint8."""
    return cv2.addWeighted(img, scale, img, 0.0, shift)


def _blend_with_gray(img: np.ndarray, factor: float) -> np.ndarray:
    """saturate(factor * img + (1 - factor) * gray(img)) per pixel: one 3x3 colour matrix (factor 0: grayscale)."""
    matrix = factor * np.eye(3, dtype=np.float32) + (1.0 - factor) * _GRAY_WEIGHTS[None, :]
    return cv2.transform(img, matrix)


def color_jitter(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """ColorJitter(0.4, 0.4, 0.2, 0.1) on uint8 RGB: the four adjustments in a random order, factors uniform.

    Brightness blends with black, contrast with the mean gray level, saturation with the grayscale image, hue
    rotates H of full-range HSV (0..255, as PIL's HSV) by round(hue * 255), wrapping around.
    """
    order = rng.permutation(4)
    brightness = rng.uniform(1 - BRIGHTNESS, 1 + BRIGHTNESS)
    contrast = rng.uniform(1 - CONTRAST, 1 + CONTRAST)
    saturation = rng.uniform(1 - SATURATION, 1 + SATURATION)
    hue = rng.uniform(-HUE, HUE)
    for op in order:
        if op == 0:
            img = _scale_shift(img, brightness, 0.0)
        elif op == 1:
            mean = float(np.dot(cv2.mean(img)[:3], _GRAY_WEIGHTS))  # = mean of the grayscale image
            img = _scale_shift(img, contrast, (1.0 - contrast) * mean)
        elif op == 2:
            img = _blend_with_gray(img, saturation)
        else:
            hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV_FULL)
            hsv[..., 0] += np.uint8(int(round(hue * 255)) % 256)  # uint8 addition wraps around the hue circle
            img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL)
    return img


CLIP_CONTRAST = (0.6, 1.4)
CLIP_SHIFT = 0.4  # in normalised units (the frames' standard deviations)


def clip_color_change(frames: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """frames (T, 3, P, P), normalised -> the same clip under one random colour change for all its frames: the
    channels in a random order, the contrast times U(0.6, 1.4), each channel shifted by U(-0.4, 0.4). Geometry and the
    motion between the frames are untouched; the colours that tell one room (one take) from another are not."""
    order = torch.from_numpy(rng.permutation(3))
    contrast = float(rng.uniform(*CLIP_CONTRAST))
    shift = torch.from_numpy(rng.uniform(-CLIP_SHIFT, CLIP_SHIFT, size=3)).to(frames.dtype).view(1, 3, 1, 1)
    return frames[:, order] * contrast + shift


@dataclass(frozen=True)
class ViewAugmentation:
    """Per-view probabilities of DINO's blur and solarisation (flip, jitter, grayscale are shared)."""

    blur_p: float
    solarize_p: float


GLOBAL_1 = ViewAugmentation(blur_p=1.0, solarize_p=0.0)
GLOBAL_2 = ViewAugmentation(blur_p=0.1, solarize_p=0.2)
LOCAL = ViewAugmentation(blur_p=0.5, solarize_p=0.0)


def photometric(img: np.ndarray, view: ViewAugmentation, rng: np.random.Generator,
                flip_p: float = FLIP_P) -> np.ndarray:
    """uint8 (S, S, 3) RGB -> uint8 (S, S, 3): flip, jitter, grayscale, blur, solarize (DINO's order). The random
    stream is the same whatever flip_p is (one draw per decision)."""
    if rng.random() < flip_p:
        img = cv2.flip(img, 1)
    if rng.random() < JITTER_P:
        img = color_jitter(img, rng)
    if rng.random() < GRAYSCALE_P:
        img = _blend_with_gray(img, 0.0)
    if rng.random() < view.blur_p:
        sigma = rng.uniform(*BLUR_SIGMA)
        img = cv2.GaussianBlur(img, (0, 0), sigmaX=sigma, sigmaY=sigma)
    if rng.random() < view.solarize_p:
        img = cv2.LUT(img, _SOLARIZE_LUT)
    return img


class Normalizer:
    """uint8 (S, S, 3) RGB -> float32 CHW: x / 255, then (x - mean) / std if enabled (one multiply-add per plane)."""

    def __init__(self, enabled: bool, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        mean, std = (np.asarray(mean, np.float64), np.asarray(std, np.float64)) if enabled else (np.zeros(3), 1.0)
        self.scale = np.broadcast_to(1.0 / (255.0 * std), (3,)).astype(np.float32)  # x * scale - offset
        self.offset = np.broadcast_to(mean / std, (3,)).astype(np.float32)  # = (x / 255 - mean) / std

    def into(self, img: np.ndarray, out: np.ndarray) -> None:
        """img uint8 (S, S, 3) -> out float32 (3, S, S)."""
        for c, plane in enumerate(cv2.split(img)):
            np.multiply(plane, self.scale[c], out=out[c], casting="unsafe")
            out[c] -= self.offset[c]

    def to_tensor(self, img: np.ndarray) -> torch.Tensor:
        out = np.empty((3,) + img.shape[:2], np.float32)
        self.into(img, out)
        return torch.from_numpy(out)


# ------------------------------------------------------------------------------------------- multi-crop


@dataclass(frozen=True)
class MultiCropConfig:
    init_crop_size: int = 300
    init_crop_scale: tuple[float, float] = (0.2, 1.0)
    global_crop_size: int = 224
    global_crops_scale: tuple[float, float] = (0.4, 1.0)
    local_crop_size: int = 112
    local_crops_scale: tuple[float, float] = (0.05, 0.4)
    local_crops_number: int = 6
    normalize: bool = True
    flip_p: float = FLIP_P

    @classmethod
    def from_data_config(cls, data) -> "MultiCropConfig":
        return cls(
            init_crop_size=data.init_crop_size, init_crop_scale=tuple(data.init_crop_scale),
            global_crop_size=data.vid_crop_size, global_crops_scale=tuple(data.global_crops_scale),
            local_crop_size=data.local_crop_size, local_crops_scale=tuple(data.local_crops_scale),
            local_crops_number=data.local_crops_number if data.use_local_crop else 0, normalize=data.norm_vid,
            flip_p=data.flip_prob,
        )


class MultiCropTransform:
    """DoRA's init crop, then DINO's 2 global + n local crops with DINO's photometric augmentations.

    ``__call__(image, rng)`` -> {"global_crops": (2, 3, G, G), "local_crops": (n, 3, L, L)} float32 tensors;
    with ``return_boxes`` also {"boxes": {"init": Box in source pixels, "global": [Box], "local": [Box]}}
    (global/local boxes in pixels of the init crop, which is init_crop_size square).
    """

    def __init__(self, cfg: MultiCropConfig):
        self.cfg = cfg
        self.normalizer = Normalizer(cfg.normalize)

    def min_init_box_side(self, height: int, width: int) -> float:
        """The smallest side an init box can have on a height x width source (smallest area, extreme ratio)."""
        return math.sqrt(height * width * self.cfg.init_crop_scale[0] * CROP_RATIO[0])

    def __call__(self, image: np.ndarray, rng: np.random.Generator, source_hw: Optional[tuple[int, int]] = None,
                 return_boxes: bool = False) -> dict:
        """image: uint8 (h, w, 3) RGB, possibly decoded at a reduced size of a source of ``source_hw`` pixels
        (boxes are drawn on the source size so the result does not depend on the decode reduction)."""
        cfg = self.cfg
        src_h, src_w = source_hw if source_hw is not None else image.shape[:2]
        scale_hw = (src_h / image.shape[0], src_w / image.shape[1])
        init_box = random_resized_crop_box(src_h, src_w, cfg.init_crop_scale, rng)
        init = crop_resize(image, init_box, cfg.init_crop_size, scale_hw)  # (I, I, 3) uint8

        size = cfg.init_crop_size
        g, n, l_size = cfg.global_crop_size, cfg.local_crops_number, cfg.local_crop_size
        global_crops = np.empty((2, 3, g, g), np.float32)
        local_crops = np.empty((n, 3, l_size, l_size), np.float32)
        boxes = {"init": init_box, "global": [], "local": []}
        for k, view in enumerate((GLOBAL_1, GLOBAL_2)):
            box = random_resized_crop_box(size, size, cfg.global_crops_scale, rng)
            self.normalizer.into(photometric(crop_resize(init, box, g), view, rng, cfg.flip_p), global_crops[k])
            boxes["global"].append(box)
        for k in range(n):
            box = random_resized_crop_box(size, size, cfg.local_crops_scale, rng)
            self.normalizer.into(photometric(crop_resize(init, box, l_size), LOCAL, rng, cfg.flip_p), local_crops[k])
            boxes["local"].append(box)
        out = {"global_crops": torch.from_numpy(global_crops), "local_crops": torch.from_numpy(local_crops)}
        if return_boxes:
            out["boxes"] = boxes
        return out


# ------------------------------------------------------------------------------------ deterministic resizes


def resize_square(image: np.ndarray, size: int, normalizer: Normalizer) -> torch.Tensor:
    """uint8 (h, w, 3) RGB -> FloatTensor (3, size, size): the whole frame resized (not cropped)."""
    return normalizer.to_tensor(resize(image, size, size))


def shorter_side_size(height: int, width: int, shorter: int) -> tuple[int, int]:
    """torchvision Resize(int): the shorter side becomes ``shorter``, the longer one keeps the aspect (floored)."""
    if height <= width:
        return shorter, int(shorter * width / height)
    return int(shorter * height / width), shorter


def resize_center_crop(image: np.ndarray, resize_to: int, crop: int, normalizer: Normalizer) -> torch.Tensor:
    """uint8 (h, w, 3) RGB -> FloatTensor (3, crop, crop): shorter side to ``resize_to``, center crop (kNN eval)."""
    out_h, out_w = shorter_side_size(image.shape[0], image.shape[1], resize_to)
    resized = resize(image, out_h, out_w)
    if out_h < crop or out_w < crop:
        raise ValueError(f"resize_center_crop: resized image {out_h}x{out_w} is smaller than the crop {crop}")
    top, left = int(round((out_h - crop) / 2)), int(round((out_w - crop) / 2))
    return normalizer.to_tensor(resized[top:top + crop, left:left + crop])
