"""A vectorised numpy ray caster: one ray per pixel, given in the camera frame by the camera model.

The camera model only enters through the rays (fisheye: projectaria-tools unproject of every pixel, computed
once per camera; pinhole: a grid), so a point drawn at pixel p is exactly where the camera model projects it.
Each solid is only intersected with the rays inside its bounding cone, so the cost follows its screen area.
"""

from __future__ import annotations

import math
from typing import Iterable, Optional

import numpy as np

from .scene import Material, Scene, Solid

AMBIENT = 0.5  # shade = AMBIENT + (1 - AMBIENT) * max(0, normal . sun)
T_MIN = 1e-4  # ignore hits closer than this (metres)


def pattern_albedo(material: Material, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """(M,), (M,) surface coordinates in metres -> (M, 3) float32 albedo."""
    f = material.frequency
    kind = material.pattern
    if kind == "solid":
        mix = np.zeros_like(u)
    elif kind == "stripes":
        mix = np.floor(u * f * 2) % 2
    elif kind == "rings":
        mix = np.floor(v * f * 2) % 2
    elif kind == "checker":
        mix = (np.floor(u * f) + np.floor(v * f)) % 2
    elif kind == "dots":
        du, dv = u * f - np.floor(u * f) - 0.5, v * f - np.floor(v * f) - 0.5
        mix = (du * du + dv * dv < 0.09).astype(u.dtype)
    elif kind == "bricks":
        row = np.floor(v * f * 2)
        shifted = u * f + 0.5 * (row % 2)
        mortar = ((v * f * 2 - row) < 0.15) | ((shifted - np.floor(shifted)) < 0.08)
        mix = mortar.astype(u.dtype)
    else:
        raise ValueError(f"unknown pattern {kind!r}")
    c1, c2 = np.asarray(material.colour, np.float32), np.asarray(material.colour2, np.float32)
    return (c1 + mix[:, None].astype(np.float32) * (c2 - c1)).astype(np.float32)


class FrameBuffer:
    """Per-ray nearest depth and shaded colour of one rendering."""

    def __init__(self, scene: Scene, directions: np.ndarray, origin: np.ndarray):
        self.scene = scene
        self.d = directions  # (N, 3) float32 world ray directions (unit; zero rows for invalid pixels)
        self.o = origin  # (3,) float64 camera centre
        self.depth = np.full(len(directions), np.inf, np.float32)  # (N,)
        self.colour = np.zeros((len(directions), 3), np.float32)  # (N, 3) shaded albedo of the nearest hit
        self.sun = np.asarray(scene.sun, np.float32)

    def _sky(self, idx: np.ndarray) -> np.ndarray:
        """(M, 3) sky colour of rays idx: horizon colour blending into the zenith colour with elevation."""
        elevation = np.clip(self.d[idx, 2], 0.0, 1.0)[:, None] ** 0.6
        top, horizon = np.asarray(self.scene.sky_top, np.float32), np.asarray(self.scene.sky_horizon, np.float32)
        return horizon + elevation * (top - horizon)

    def commit(self, idx: np.ndarray, t: np.ndarray, normal: np.ndarray, material: Material,
               u: np.ndarray, v: np.ndarray) -> None:
        """Keeps the hits (rays idx at distance t) that are nearer than what is drawn; shades them."""
        nearer = t < self.depth[idx]
        if not nearer.any():
            return
        idx, t, normal, u, v = idx[nearer], t[nearer], normal[nearer], u[nearer], v[nearer]
        albedo = pattern_albedo(material, u, v)
        if not material.emissive:
            light = AMBIENT + (1 - AMBIENT) * np.clip(normal @ self.sun, 0.0, None)
            albedo = albedo * light[:, None]
        self.depth[idx] = t
        self.colour[idx] = albedo

    def image(self, height: int, width: int, valid: Optional[np.ndarray]) -> np.ndarray:
        """(H, W, 3) uint8 RGB with distance haze; rays that hit nothing see the sky; invalid pixels (outside
        the fisheye's image circle) are black."""
        hit = np.isfinite(self.depth)
        haze = np.exp(-self.depth[hit] / self.scene.fog_distance)[:, None]
        horizon = np.asarray(self.scene.sky_horizon, np.float32)
        self.colour[hit] = self.colour[hit] * haze + horizon * (1 - haze)
        missed = np.flatnonzero(~hit)
        self.colour[missed] = self._sky(missed)
        if valid is not None:
            self.colour[~valid] = 0.0
        return (np.clip(self.colour, 0, 1) * 255 + 0.5).astype(np.uint8).reshape(height, width, 3)


def _ground_and_walls(fb: FrameBuffer) -> None:
    """The courtyard, in one pass over all rays: each ray's first wall (the nearer of its x and y walls), the
    ground if it is hit before that; then one shaded commit per surface. Drawn first, so nothing is nearer."""
    d, room = fb.d, fb.scene.room
    ox, oy, oz = (float(v) for v in fb.o)  # python floats keep the float32 arrays float32
    with np.errstate(divide="ignore", invalid="ignore"):
        t_x = (np.where(d[:, 0] > 0, room.half_x, -room.half_x).astype(np.float32) - ox) / d[:, 0]
        t_y = (np.where(d[:, 1] > 0, room.half_y, -room.half_y).astype(np.float32) - oy) / d[:, 1]
        t_ground = np.where(d[:, 2] < -1e-6, -oz / d[:, 2], np.inf).astype(np.float32)
    t_x, t_y = np.nan_to_num(t_x, nan=np.inf), np.nan_to_num(t_y, nan=np.inf)
    x_first = t_x <= t_y
    t_wall = np.where(x_first, t_x, t_y)
    z_wall = oz + t_wall * d[:, 2]
    wall = (z_wall >= 0) & (z_wall <= room.wall_height) & (t_wall > T_MIN)
    ground = t_ground < np.where(wall, t_wall, np.inf)
    wall &= ~ground
    idx = np.flatnonzero(ground)
    t = t_ground[idx]
    normal = np.broadcast_to(np.array([0, 0, 1], np.float32), (len(idx), 3))
    fb.commit(idx, t, normal, fb.scene.ground, ox + t * d[idx, 0], oy + t * d[idx, 1])
    # walls +x, -x, +y, -y face inwards; u runs along the wall, v is the height
    for axis, sign, material in ((0, 1, room.walls[0]), (0, -1, room.walls[1]), (1, 1, room.walls[2]),
                                 (1, -1, room.walls[3])):
        on_axis = x_first if axis == 0 else ~x_first
        idx = np.flatnonzero(wall & on_axis & (sign * d[:, axis] > 0))
        t = t_wall[idx]
        normal = np.zeros((len(idx), 3), np.float32)
        normal[:, axis] = -sign
        along = (oy if axis == 0 else ox) + t * d[idx, 1 - axis]
        fb.commit(idx, t, normal, material, along, z_wall[idx])


def _visible_solids(fb: FrameBuffer, solids: list[Solid], forward: np.ndarray, cone_cos: float):
    """Yields (solid, indices of the rays inside its bounding cone) for the solids that may be in view."""
    if not solids:
        return
    centres = np.array([s.bounds[0] for s in solids])  # (K, 3)
    radii = np.array([s.bounds[1] for s in solids])  # (K,)
    to_centre = centres - fb.o
    dist = np.linalg.norm(to_centre, axis=1)
    inside = dist <= radii
    half_angle = np.arcsin(np.clip(radii / np.maximum(dist, 1e-9), 0, 1))
    off_axis = np.arccos(np.clip(to_centre @ forward / np.maximum(dist, 1e-9), -1, 1))
    in_view = inside | (off_axis - half_angle <= math.acos(max(-1.0, min(1.0, cone_cos))))
    for k in np.flatnonzero(in_view):
        if inside[k]:
            yield solids[k], np.arange(len(fb.d))
            continue
        idx = np.flatnonzero(fb.d @ (to_centre[k] / dist[k]).astype(np.float32) > math.cos(half_angle[k]))
        if len(idx):
            yield solids[k], idx


def _box(fb: FrameBuffer, solid: Solid, idx: np.ndarray):
    cy, sy = math.cos(solid.yaw), math.sin(solid.yaw)
    rel = fb.o - np.asarray(solid.centre)
    o_local = np.array([cy * rel[0] + sy * rel[1], -sy * rel[0] + cy * rel[1], rel[2]], np.float32)
    d = fb.d[idx]
    d_local = np.stack([cy * d[:, 0] + sy * d[:, 1], -sy * d[:, 0] + cy * d[:, 1], d[:, 2]], 1)
    d_local = np.where(np.abs(d_local) < 1e-9, 1e-9, d_local)  # (M, 3)
    half = np.asarray(solid.size, np.float32)
    t1, t2 = (-half - o_local) / d_local, (half - o_local) / d_local
    t_near_axes = np.minimum(t1, t2)
    t_near, t_far = t_near_axes.max(1), np.maximum(t1, t2).min(1)
    hit = (t_near <= t_far) & (t_near > T_MIN)
    idx, t, d_local, axis = idx[hit], t_near[hit], d_local[hit], t_near_axes[hit].argmax(1)
    rows = np.arange(len(idx))
    n_local = np.zeros((len(idx), 3), np.float32)
    n_local[rows, axis] = -np.sign(d_local[rows, axis])
    normal = np.stack([cy * n_local[:, 0] - sy * n_local[:, 1], sy * n_local[:, 0] + cy * n_local[:, 1],
                       n_local[:, 2]], 1)
    p = o_local + t[:, None] * d_local  # (M, 3) hit point in box coordinates
    u = np.where(axis == 0, p[:, 1], p[:, 0])
    v = np.where(axis == 2, p[:, 1], p[:, 2])
    return idx, t, normal, u, v


def _cylinder(fb: FrameBuffer, solid: Solid, idx: np.ndarray):
    radius, height = solid.size[0], solid.size[1]
    rel = (fb.o - np.asarray(solid.centre)).astype(np.float32)
    d = fb.d[idx]
    a = d[:, 0] ** 2 + d[:, 1] ** 2
    b = 2 * (rel[0] * d[:, 0] + rel[1] * d[:, 1])
    c = rel[0] ** 2 + rel[1] ** 2 - radius ** 2
    disc = b * b - 4 * a * c
    with np.errstate(invalid="ignore", divide="ignore"):
        t_side = (-b - np.sqrt(disc)) / (2 * a)
        z = rel[2] + t_side * d[:, 2]
        side = (disc >= 0) & (a > 1e-9) & (t_side > T_MIN) & (z >= 0) & (z <= height)
        t_cap = (height - rel[2]) / d[:, 2]
        cap_x, cap_y = rel[0] + t_cap * d[:, 0], rel[1] + t_cap * d[:, 1]
        cap = (t_cap > T_MIN) & (cap_x ** 2 + cap_y ** 2 <= radius ** 2) & ~(side & (t_side < t_cap))
    t = np.where(cap, t_cap, np.where(side, t_side, np.inf)).astype(np.float32)
    hit = side | cap
    idx, t, cap, d = idx[hit], t[hit], cap[hit], d[hit]
    p = rel + t[:, None] * d
    normal = np.where(cap[:, None], np.array([0, 0, 1], np.float32),
                      np.stack([p[:, 0] / radius, p[:, 1] / radius, np.zeros_like(t)], 1)).astype(np.float32)
    around = (np.arctan2(p[:, 1], p[:, 0]) + solid.yaw) * radius
    u = np.where(cap, p[:, 0], around)
    v = np.where(cap, p[:, 1], p[:, 2])
    return idx, t, normal, u, v


def _sphere(fb: FrameBuffer, solid: Solid, idx: np.ndarray):
    radius = solid.size[0]
    rel = (fb.o - np.asarray(solid.centre)).astype(np.float32)
    d = fb.d[idx]
    b = d @ rel
    disc = b * b - (rel @ rel - radius ** 2)
    with np.errstate(invalid="ignore"):
        t = -b - np.sqrt(disc)
    hit = (disc >= 0) & (t > T_MIN)
    idx, t, d = idx[hit], t[hit].astype(np.float32), d[hit]
    normal = (rel + t[:, None] * d) / radius
    u = (np.arctan2(normal[:, 1], normal[:, 0]) + solid.yaw) * radius
    return idx, t, normal.astype(np.float32), u, normal[:, 2] * radius


def _capsule(fb: FrameBuffer, solid: Solid, idx: np.ndarray):
    """Ray / capsule (segment a-b, radius r): the cylinder body, else the nearer end sphere."""
    a, b, r = np.asarray(solid.centre), np.asarray(solid.end), solid.size[0]
    ba, oa = (b - a).astype(np.float32), (fb.o - a).astype(np.float32)
    d = fb.d[idx]
    baba, baoa, oaoa = float(ba @ ba), float(ba @ oa), float(oa @ oa)
    bard, rdoa = d @ ba, d @ oa
    k2 = baba - bard * bard
    k1 = baba * rdoa - baoa * bard
    k0 = baba * oaoa - baoa * baoa - r * r * baba
    disc = k1 * k1 - k2 * k0
    with np.errstate(invalid="ignore", divide="ignore"):
        t = (-k1 - np.sqrt(disc)) / k2
        y = baoa + t * bard
        body = (disc >= 0) & (y > 0) & (y < baba) & (k2 > 1e-12)
        oc = np.where((y <= 0)[:, None], oa, (fb.o - b).astype(np.float32))  # (M, 3) origin rel. to the end sphere
        bc = np.einsum("ij,ij->i", d, oc)
        hc = bc * bc - (np.einsum("ij,ij->i", oc, oc) - r * r)
        t_cap = -bc - np.sqrt(hc)
    t = np.where(body, t, np.where(hc > 0, t_cap, np.inf)).astype(np.float32)
    hit = np.isfinite(t) & (t > T_MIN)
    idx, t, d = idx[hit], t[hit], d[hit]
    p = oa + t[:, None] * d  # hit point relative to a
    along = np.clip((p @ ba) / max(baba, 1e-12), 0, 1)
    normal = ((p - along[:, None] * ba) / r).astype(np.float32)
    zeros = np.zeros(len(idx), np.float32)
    return idx, t, normal, zeros, zeros


_INTERSECT = {"box": _box, "cylinder": _cylinder, "sphere": _sphere, "capsule": _capsule}


def render(scene: Scene, rays_cam: np.ndarray, cam_to_world: np.ndarray, height: int, width: int,
           valid: Optional[np.ndarray] = None, extra: Iterable[Solid] = ()) -> np.ndarray:
    """Draws ``scene`` plus ``extra`` solids (the body, markers) seen from a camera.

    rays_cam: (H*W, 3) unit rays in the camera frame (x right, y down, z forward), row-major pixels.
    cam_to_world: (4, 4) camera -> world. valid: (H*W,) bool, False outside the lens's image circle.
    Returns (H, W, 3) uint8 RGB.
    """
    rotation = cam_to_world[:3, :3].astype(np.float32)
    fb = FrameBuffer(scene, rays_cam.astype(np.float32) @ rotation.T, cam_to_world[:3, 3].astype(np.float64))
    _ground_and_walls(fb)
    forward = cam_to_world[:3, 2].astype(np.float64)
    usable = rays_cam[valid] if valid is not None else rays_cam
    cone_cos = float(usable[:, 2].min())  # widest ray of this camera, relative to its optical axis
    for solid, idx in _visible_solids(fb, list(scene.solids) + list(extra), forward, cone_cos):
        hits = _INTERSECT[solid.kind](fb, solid, idx)
        if len(hits[0]):
            fb.commit(hits[0], hits[1], hits[2], solid.material, hits[3], hits[4])
    return fb.image(height, width, valid)
