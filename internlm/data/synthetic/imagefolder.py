"""The ImageFolder classification set for the kNN evaluation: place recognition. One class = one courtyard that no
take or walk of the world uses (its own random stream), built like the takes' courtyards (palette, wall and
ground materials, landmark objects); its images are views from random standpoints, headings and pitches inside
it, each with its own exposure (brightness, contrast and saturation factors in 0.6-1.4, like a camera's
auto-exposure and white balance).

Why places and not the object catalogue: catalogue objects have fixed colours and fill the frame, so raw-pixel
cosine separates them better than any network trained at demo scale; recognising a place from a new viewpoint
under another exposure needs features that are invariant to exactly what DINO's crops and colour jitter vary,
so it measures what the representation learned, and raw pixels and an untrained network are real floors.
"""

from __future__ import annotations

import math
import os

import numpy as np

from .camera import focal_for_fov, look_at, pinhole_rays
from .raycast import render
from .scene import free_spot, random_scene
from .writers import write_jpeg

FOV_DEG = 90.0
IMAGEFOLDER_STREAM = 3  # the random-stream code of this set (takes use 1, walks 2)


def class_name(class_index: int) -> str:
    return f"place_{class_index:02d}"


def render_place_image(scene, rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size, 3) uint8 RGB: ``scene`` from a random standpoint, heading and pitch, at a random exposure."""
    x, y = free_spot(scene, rng, clearance=0.8)
    eye = np.array([x, y, rng.uniform(1.4, 1.8)])
    yaw, pitch = rng.uniform(0, 2 * math.pi), rng.uniform(-0.6, 0.15)
    target = eye + np.array([math.cos(yaw) * math.cos(pitch), math.sin(yaw) * math.cos(pitch), math.sin(pitch)])
    rays = pinhole_rays(size, size, focal_for_fov(size, FOV_DEG))
    return exposure(render(scene, rays, look_at(eye, target), size, size), rng)


def exposure(image: np.ndarray, rng: np.random.Generator, spread: float = 0.4) -> np.ndarray:
    """A photo's own exposure: brightness, contrast and saturation each scaled by a factor in 1 +- spread."""
    x = image.astype(np.float32) / 255.0
    x = x * rng.uniform(1 - spread, 1 + spread)  # brightness
    mean = x.mean()
    x = (x - mean) * rng.uniform(1 - spread, 1 + spread) + mean  # contrast
    grey = x.mean(axis=-1, keepdims=True)
    x = (x - grey) * rng.uniform(1 - spread, 1 + spread) + grey  # saturation
    return (np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def write_class(out_dir: str, seed: int, class_index: int, train_images: int, val_images: int, size: int) -> int:
    """Writes {out_dir}/{train,val}/place_{c}/place_{c}_{k:04d}.jpg; returns the number of images."""
    name = class_name(class_index)
    scene = random_scene(np.random.default_rng([seed, IMAGEFOLDER_STREAM, class_index]))
    count = 0
    for split_code, (split, n) in enumerate((("train", train_images), ("val", val_images))):
        for k in range(n):
            rng = np.random.default_rng([seed, IMAGEFOLDER_STREAM, class_index, split_code, k])
            write_jpeg(os.path.join(out_dir, split, name, f"{name}_{k:04d}.jpg"), render_place_image(scene, rng, size))
            count += 1
    return count
