"""What the synthetic world is made of: materials, solids, rooms, the object catalogue, and scene layouts.

World coordinates: metres, z up, the ground is z = 0. A scene is an open-topped rectangular courtyard (ground,
four walls, sky) holding landmark solids; every take gets its own layout, palette and landmarks, so frames of
different takes look different.
"""

from __future__ import annotations

import colorsys
import functools
import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

PATTERNS = ("solid", "stripes", "rings", "checker", "dots", "bricks")


@dataclass(frozen=True)
class Material:
    colour: tuple[float, float, float]  # RGB in [0, 1]
    colour2: tuple[float, float, float]  # second colour of the pattern
    pattern: str = "solid"  # one of PATTERNS
    frequency: float = 2.0  # pattern cycles per metre
    emissive: bool = False  # drawn without shading (test markers)


@dataclass(frozen=True)
class Solid:
    """One primitive. ``kind``: box | cylinder | sphere | capsule.

    box: ``centre`` is the box centre, ``size`` its half extents along its own (yawed) axes.
    cylinder: vertical, ``centre`` the centre of its base disc, ``size`` = (radius, height, 0).
    sphere: ``size`` = (radius, 0, 0).  capsule: segment ``centre`` -> ``end``, ``size`` = (radius, 0, 0).
    """

    kind: str
    centre: tuple[float, float, float]
    size: tuple[float, float, float]
    material: Material
    yaw: float = 0.0
    end: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @functools.cached_property
    def bounds(self) -> tuple[np.ndarray, float]:
        """bounding_sphere(), computed once (solids are immutable)."""
        return self.bounding_sphere()

    def bounding_sphere(self) -> tuple[np.ndarray, float]:
        c, s = np.asarray(self.centre, np.float64), self.size
        if self.kind == "box":
            return c, float(np.linalg.norm(s))
        if self.kind == "cylinder":
            return c + [0.0, 0.0, s[1] / 2], math.hypot(s[0], s[1] / 2)
        if self.kind == "sphere":
            return c, float(s[0])
        if self.kind == "capsule":
            e = np.asarray(self.end, np.float64)
            return (c + e) / 2, float(np.linalg.norm(e - c) / 2 + s[0])
        raise ValueError(f"unknown solid kind {self.kind!r}")

    def footprint(self) -> tuple[float, float, float]:
        """(x, y, radius) of a disc on the ground that contains the solid (for walking around it)."""
        c, r = self.bounding_sphere()
        if self.kind in ("box", "cylinder"):
            r = math.hypot(self.size[0], self.size[1]) if self.kind == "box" else self.size[0]
        return float(c[0]), float(c[1]), float(r)


@dataclass(frozen=True)
class Room:
    half_x: float  # walls at x = +-half_x, y = +-half_y
    half_y: float
    wall_height: float
    walls: tuple[Material, Material, Material, Material]  # +x, -x, +y, -y


@dataclass
class Scene:
    room: Room
    ground: Material
    sky_top: tuple[float, float, float]
    sky_horizon: tuple[float, float, float]
    sun: tuple[float, float, float]  # unit vector towards the sun
    solids: list[Solid] = field(default_factory=list)
    fog_distance: float = 40.0  # metres at which ~63% of the colour is haze

    def obstacles(self) -> np.ndarray:
        """(K, 3) footprints (x, y, radius) of the solids standing on the ground."""
        rows = [s.footprint() for s in self.solids if s.centre[2] < 2.0]
        return np.array(rows, np.float64).reshape(-1, 3)


# ---------------------------------------------------------------- object catalogue (also the ImageFolder classes)
@dataclass(frozen=True)
class ObjectClass:
    name: str
    kind: str  # box | cylinder | sphere
    dims: tuple[float, float, float]  # box: half extents; cylinder: (radius, height, 0); sphere: (radius, 0, 0)
    material: Material
    lifted: float = 0.0  # spheres float on a pole-less plinth: height of their bottom above the ground


def _rgb(h: float, s: float, v: float) -> tuple[float, float, float]:
    return tuple(float(c) for c in colorsys.hsv_to_rgb(h % 1.0, s, v))


WHITE, BLACK = (0.95, 0.95, 0.95), (0.08, 0.08, 0.08)
OBJECT_CLASSES = (
    ObjectClass("red_striped_crate", "box", (0.35, 0.35, 0.35), Material(_rgb(0.0, 0.85, 0.85), WHITE, "stripes", 4.0)),
    ObjectClass("blue_checker_drum", "cylinder", (0.3, 0.9, 0.0),
                Material(_rgb(0.62, 0.8, 0.8), WHITE, "checker", 5.0)),
    ObjectClass("yellow_dotted_ball", "sphere", (0.4, 0.0, 0.0), Material(_rgb(0.15, 0.9, 0.95), BLACK, "dots", 5.0),
                lifted=0.0),
    ObjectClass("green_pillar", "box", (0.15, 0.15, 0.9), Material(_rgb(0.33, 0.8, 0.6), _rgb(0.33, 0.6, 0.3),
                                                                   "rings", 3.0)),
    ObjectClass("orange_ringed_post", "cylinder", (0.12, 1.4, 0.0),
                Material(_rgb(0.07, 0.9, 0.95), BLACK, "rings", 4.0)),
    ObjectClass("purple_brick_block", "box", (0.6, 0.35, 0.3), Material(_rgb(0.78, 0.6, 0.6), _rgb(0.78, 0.3, 0.9),
                                                                        "bricks", 4.0)),
    ObjectClass("cyan_striped_globe", "sphere", (0.3, 0.0, 0.0), Material(_rgb(0.5, 0.8, 0.85), _rgb(0.5, 0.9, 0.35),
                                                                          "stripes", 6.0), lifted=0.6),
    ObjectClass("black_white_cube", "box", (0.25, 0.25, 0.25), Material(WHITE, BLACK, "checker", 6.0)),
    ObjectClass("pink_barrel", "cylinder", (0.45, 0.6, 0.0), Material(_rgb(0.92, 0.45, 0.95), _rgb(0.92, 0.7, 0.5),
                                                                       "stripes", 3.0)),
    ObjectClass("brown_dotted_bench", "box", (0.8, 0.2, 0.22), Material(_rgb(0.08, 0.6, 0.45), WHITE, "dots", 4.0)),
)


def object_solid(cls: ObjectClass, x: float, y: float, yaw: float, scale: float,
                 colour_jitter: np.ndarray) -> Solid:
    """An instance of a catalogue class standing on the ground at (x, y); colour_jitter: (3,) added to RGB."""
    d = tuple(v * scale for v in cls.dims)
    material = Material(tuple(np.clip(np.array(cls.material.colour) + colour_jitter, 0, 1).tolist()),
                        cls.material.colour2, cls.material.pattern, cls.material.frequency / scale)
    if cls.kind == "box":
        return Solid("box", (x, y, d[2]), d, material, yaw=yaw)
    if cls.kind == "cylinder":
        return Solid("cylinder", (x, y, 0.0), d, material, yaw=yaw)
    return Solid("sphere", (x, y, d[0] + cls.lifted * scale), d, material, yaw=yaw)


# ---------------------------------------------------------------- scene layouts
def _random_material(rng: np.random.Generator, patterns=PATTERNS, value=(0.35, 0.9)) -> Material:
    hue = rng.uniform()
    c1 = _rgb(hue, rng.uniform(0.3, 0.9), rng.uniform(*value))
    c2 = _rgb(hue + rng.uniform(0.1, 0.5), rng.uniform(0.2, 0.9), rng.uniform(*value))
    return Material(c1, c2, str(rng.choice(patterns)), float(rng.uniform(0.7, 3.0)))


def random_scene(rng: np.random.Generator, half_extent: tuple[float, float] = (6.0, 9.0),
                 landmarks: tuple[int, int] = (7, 11), buildings: int = 0) -> Scene:
    """A courtyard with its own palette and ``landmarks`` catalogue objects (large, scattered).

    ``buildings``: extra big textured boxes (streets of the WalkingTours-style walks).
    """
    hx, hy = rng.uniform(*half_extent), rng.uniform(*half_extent)
    room = Room(hx, hy, float(rng.uniform(2.5, 5.0)),
                tuple(_random_material(rng, ("stripes", "bricks", "checker", "rings", "dots")) for _ in range(4)))
    ground = _random_material(rng, ("checker", "bricks", "stripes", "dots"), value=(0.3, 0.7))
    sun = np.array([rng.uniform(-1, 1), rng.uniform(-1, 1), rng.uniform(0.6, 1.5)])
    sky_hue = rng.uniform(0.5, 0.7)
    scene = Scene(room, ground, _rgb(sky_hue, rng.uniform(0.3, 0.7), 0.9), _rgb(sky_hue + 0.05, 0.15, 0.97),
                  tuple((sun / np.linalg.norm(sun)).tolist()), fog_distance=float(2.5 * max(hx, hy)))
    for _ in range(buildings):
        _place(scene, rng, lambda x, y: _building(rng, x, y), margin=1.5)
    for _ in range(int(rng.integers(landmarks[0], landmarks[1] + 1))):
        cls = OBJECT_CLASSES[int(rng.integers(len(OBJECT_CLASSES)))]
        scale = float(rng.uniform(1.0, 2.2))
        _place(scene, rng, lambda x, y, cls=cls, scale=scale: object_solid(cls, x, y, float(rng.uniform(0, math.pi)),
                                                                           scale, rng.uniform(-0.08, 0.08, 3)),
               margin=1.0)
    return scene


def _building(rng: np.random.Generator, x: float, y: float) -> Solid:
    half = (float(rng.uniform(0.8, 2.5)), float(rng.uniform(0.8, 2.5)), float(rng.uniform(1.0, 2.5)))
    return Solid("box", (x, y, half[2]), half, _random_material(rng, ("bricks", "checker", "stripes")),
                 yaw=float(rng.uniform(0, math.pi)))


def _place(scene: Scene, rng: np.random.Generator, make, margin: float, tries: int = 30) -> Optional[Solid]:
    """Adds make(x, y) at a random free spot (clear of the walls and other solids by ``margin``), if one is found."""
    room = scene.room
    for _ in range(tries):
        x, y = rng.uniform(-room.half_x + 1.0, room.half_x - 1.0), rng.uniform(-room.half_y + 1.0, room.half_y - 1.0)
        solid = make(float(x), float(y))
        sx, sy, sr = solid.footprint()
        if abs(sx) + sr > room.half_x - 0.5 or abs(sy) + sr > room.half_y - 0.5:
            continue
        others = scene.obstacles()
        if len(others) and np.any(np.hypot(others[:, 0] - sx, others[:, 1] - sy) < others[:, 2] + sr + margin):
            continue
        scene.solids.append(solid)
        return solid
    return None


def free_spot(scene: Scene, rng: np.random.Generator, clearance: float = 1.2) -> tuple[float, float]:
    """A random ground point at least ``clearance`` from the walls and from every solid's footprint."""
    room, obstacles = scene.room, scene.obstacles()
    for _ in range(200):
        x = rng.uniform(-room.half_x + clearance, room.half_x - clearance)
        y = rng.uniform(-room.half_y + clearance, room.half_y - clearance)
        gaps = np.hypot(obstacles[:, 0] - x, obstacles[:, 1] - y) - obstacles[:, 2]
        if not len(obstacles) or np.all(gaps > clearance):
            return float(x), float(y)
    raise RuntimeError("no free spot found in the synthetic scene (too many solids for the room)")
