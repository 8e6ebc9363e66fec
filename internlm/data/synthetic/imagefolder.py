"""The ImageFolder classification set: catalogue objects of the world seen from varied viewpoints, distances,
positions in the frame, backgrounds and exposures, for the kNN evaluation. One class = one object kind (shape +
colour + texture).

The nuisances are what a representation should ignore and what raw pixels cannot: the object sits anywhere in
the central part of the frame at 25-60% of its half-width, in a random courtyard, and each photo has its own exposure (brightness,
contrast and saturation factors in 0.6-1.4, like a camera's auto-exposure and white balance). Raw-pixel cosine
on such photos is mostly a comparison of backgrounds and exposures.
"""

from __future__ import annotations

import math
import os

import numpy as np

from .camera import focal_for_fov, look_at, pinhole_rays
from .raycast import render
from .scene import OBJECT_CLASSES, ObjectClass, free_spot, object_solid, random_scene
from .writers import write_jpeg

FOV_DEG = 60.0


def render_object_image(cls: ObjectClass, rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size, 3) uint8 RGB: one instance of ``cls`` in a random courtyard, from a random viewpoint."""
    scene = random_scene(rng, half_extent=(7.0, 10.0), landmarks=(0, 3))
    x, y = free_spot(scene, rng, clearance=2.0)
    solid = object_solid(cls, x, y, float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(0.7, 1.2)),
                         rng.uniform(-0.06, 0.06, 3))
    scene.solids.append(solid)
    centre, radius = solid.bounding_sphere()
    fill = rng.uniform(0.25, 0.6)  # fraction of the half-width the object covers
    distance = radius / (math.tan(math.radians(FOV_DEG) / 2) * fill)
    azimuth, elevation = rng.uniform(0, 2 * math.pi), rng.uniform(0.05, 0.6)
    eye = centre + distance * np.array([math.cos(azimuth) * math.cos(elevation),
                                        math.sin(azimuth) * math.cos(elevation), math.sin(elevation)])
    eye[0] = np.clip(eye[0], -scene.room.half_x + 0.3, scene.room.half_x - 0.3)
    eye[1] = np.clip(eye[1], -scene.room.half_y + 0.3, scene.room.half_y - 0.3)
    eye[2] = max(eye[2], 0.3)
    # look past the object: a shift d moves it by d * fill / radius half-widths, here up to 0.45 of them
    target = centre + rng.uniform(-0.45, 0.45, 3) * radius / fill
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
    """Writes {out_dir}/{train,val}/{class}/{class}_{k:04d}.jpg; returns the number of images."""
    cls = OBJECT_CLASSES[class_index]
    count = 0
    for split_code, (split, n) in enumerate((("train", train_images), ("val", val_images))):
        for k in range(n):
            rng = np.random.default_rng([seed, 3, class_index, split_code, k])
            image = render_object_image(cls, rng, size)
            write_jpeg(os.path.join(out_dir, split, cls.name, f"{cls.name}_{k:04d}.jpg"), image)
            count += 1
    return count
