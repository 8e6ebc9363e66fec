"""A walking, turning, looking-around, sometimes reaching body with the 17 Ego-Exo4D joints and a head camera.

Motion (30 fps): smooth random speed (stops included) and turn rate, steering clear of walls and solids (so
turns are announced by what the camera sees ahead); a periodic gait (stride ~1.2-1.7 s: leg and arm swing,
pelvis bob twice per stride, sway, shoulder twist); head yaw/pitch independent of the walking direction,
critically damped towards a target: the nearest landmark in front some of the time, else quick glances around
(targets held under a second, so the camera often turns 10-40 degrees between two 6 Hz frames);
reach episodes (mostly when a landmark is within reach in front, sometimes anywhere) bring one or both hands
forward into the view while the walker slows down and the head looks down at them.
Body frame: x forward, y left, z up. The head camera is mounted at the brow, pitched down by CAMERA_TILT.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import numpy as np

from ..egoexo_format import JOINT_INDEX, NUM_JOINTS
from .camera import CAMERA_IN_HEAD
from .scene import Material, Scene, Solid, free_spot

FPS = 30
CAMERA_TILT = 0.2  # rad, camera pitched down relative to the head
# head-frame points (x forward, y left, z up) relative to the head centre
FACE_POINTS = {"nose": (0.10, 0.0, -0.02), "left-eye": (0.08, 0.033, 0.02), "right-eye": (0.08, -0.033, 0.02),
               "left-ear": (-0.005, 0.078, 0.0), "right-ear": (-0.005, -0.078, 0.0)}
CAMERA_IN_HEAD_CENTRE = (0.095, 0.0, 0.035)
UPPER_ARM, FOREARM, THIGH, SHIN = 0.29, 0.26, 0.45, 0.43
# Head glances: yaw targets within +-HEAD_YAW_RANGE rad (body-relative), held GLANCE_HOLD_S seconds, reached by a
# critically damped follower of natural frequency HEAD_OMEGA rad/s: the camera often turns by 10-40 degrees
# between two 6 Hz frames, so the next frame depends on where the head goes (the world model's test).
HEAD_YAW_RANGE = 1.3
GLANCE_HOLD_S = (0.3, 0.9)
HEAD_OMEGA = 12.0


@dataclass
class Motion:
    joints: np.ndarray  # (T, 17, 3) world, metres, egoexo_format.JOINT_NAMES order
    cam_to_world: np.ndarray  # (T, 4, 4) head camera -> world
    heading: np.ndarray  # (T,) walking direction, rad
    speed: np.ndarray  # (T,) m/s
    reach: np.ndarray  # (T,) 0..1 how far the hands are in a reach
    position: np.ndarray  # (T, 2) the walker on the ground, world x, y (metres)
    # (T, 5) what the walker perceives and acts on: look-ahead clearance ahead / left / right (m), the nearest landmark
    # in front's bearing (rad) and gap (m), NaN when there is none (privileged.py writes it as the scene truth)
    percept: np.ndarray


def _rot_z(a: np.ndarray) -> np.ndarray:
    c, s, z, o = np.cos(a), np.sin(a), np.zeros_like(a), np.ones_like(a)
    return np.stack([np.stack([c, -s, z], -1), np.stack([s, c, z], -1), np.stack([z, z, o], -1)], -2)


def _rot_y(a: np.ndarray) -> np.ndarray:  # positive = tip the x axis downwards
    c, s, z, o = np.cos(a), np.sin(a), np.zeros_like(a), np.ones_like(a)
    return np.stack([np.stack([c, z, s], -1), np.stack([z, o, z], -1), np.stack([-s, z, c], -1)], -2)


def _rot_x(a: np.ndarray) -> np.ndarray:
    c, s, z, o = np.cos(a), np.sin(a), np.zeros_like(a), np.ones_like(a)
    return np.stack([np.stack([o, z, z], -1), np.stack([z, c, -s], -1), np.stack([z, s, c], -1)], -2)


def _clearance(scene: Scene, obstacles: np.ndarray, x: float, y: float) -> float:
    room = scene.room
    gap = min(room.half_x - abs(x), room.half_y - abs(y))
    if len(obstacles):
        gap = min(gap, float(np.min(np.hypot(obstacles[:, 0] - x, obstacles[:, 1] - y) - obstacles[:, 2])))
    return gap


# The walker's perception (used by its decisions, and written as the privileged scene truth, privileged.py):
# clearance at a look-ahead point 1 + 1.5 * speed metres ahead (and DODGE_SIDE rad to each side); the nearest
# landmark within ATTENTION_RANGE m and ATTENTION_BEARING rad of the walking direction draws the gaze, and a reach
# when it is within REACH_GAP m and REACH_BEARING rad.
DODGE_CLEARANCE, DODGE_SIDE = 0.8, 0.9
ATTENTION_RANGE, ATTENTION_BEARING = 4.5, 1.3
REACH_GAP, REACH_BEARING = 1.6, 0.6


def look_ahead_clearance(scene: Scene, obstacles: np.ndarray, x: float, y: float, direction: float,
                         speed: float) -> float:
    """Clearance (m) of the point 1 + 1.5 * speed metres from (x, y) in ``direction`` (rad, world)."""
    look_ahead = 1.0 + 1.5 * speed
    return _clearance(scene, obstacles, x + look_ahead * math.cos(direction), y + look_ahead * math.sin(direction))


def landmark_in_front(obstacles: np.ndarray, x: float, y: float, heading: float) -> tuple[int, float, float]:
    """(index, bearing relative to the heading (rad), gap to its footprint (m)) of the nearest landmark in front;
    (-1, nan, inf) when there is none."""
    if not len(obstacles):
        return -1, math.nan, math.inf
    gaps = np.hypot(obstacles[:, 0] - x, obstacles[:, 1] - y) - obstacles[:, 2]
    bearings = np.array([_wrap(math.atan2(oy - y, ox - x) - heading) for ox, oy, _ in obstacles])
    in_front = (gaps < ATTENTION_RANGE) & (np.abs(bearings) < ATTENTION_BEARING)
    if not in_front.any():
        return -1, math.nan, math.inf
    k = int(np.argmin(np.where(in_front, gaps, np.inf)))
    return k, float(bearings[k]), float(gaps[k])


def _follow(targets: np.ndarray, omega: float) -> np.ndarray:
    """(n,) a critically damped follower of ``targets`` (n,): smooth, with the lag of a head turning."""
    out, x, v, dt = np.zeros(len(targets)), 0.0, 0.0, 1.0 / FPS
    for i, target in enumerate(targets):
        v += (omega * omega * (target - x) - 2 * omega * v) * dt
        x += v * dt
        out[i] = x
    return out


def _piecewise(rng: np.random.Generator, n: int, low: float, high: float, hold: tuple[float, float],
               p_zero: float) -> np.ndarray:
    """(n,) random targets held for ``hold`` seconds; 0 with probability p_zero."""
    out, i = np.zeros(n), 0
    while i < n:
        length = max(1, int(rng.uniform(*hold) * FPS))
        out[i:i + length] = 0.0 if rng.uniform() < p_zero else rng.uniform(low, high)
        i += length
    return out


def _wrap(angle: float) -> float:
    return (angle + math.pi) % (2 * math.pi) - math.pi


@dataclass
class _Reach:
    start: int
    length: int
    side: float  # +1 left hand, -1 right hand, 0 both
    target: tuple[float, float, float]  # wrist target relative to the shoulder (forward, inward, up), metres


def _walk(scene: Scene, rng: np.random.Generator, n: int, start: tuple[float, float], heading0: float,
          reaching: bool):
    """The walker's decisions, frame by frame: speed and heading (avoiding walls and solids), which landmark
    it attends to, and when it reaches out (near a landmark in front, or now and then).

    Returns positions (n, 2), heading (n,), speed (n,), attention (n,) landmark bearing relative to the heading
    (NaN when none), reaches (list of _Reach), percept (n, 5): what the walker perceives and acts on at each frame,
    the look-ahead clearance ahead / left / right (m) and the nearest landmark in front (bearing, gap; NaN when none).
    """
    obstacles, dt = scene.obstacles(), 1.0 / FPS
    x, y = start
    heading, speed, turn = heading0, float(rng.uniform(0.6, 1.3)), 0.0
    speed_target, turn_target, next_speed, next_turn, dodge = speed, 0.0, 0, 0, 0.0
    reach_until, reach_cooldown, reaches = -1, int(FPS * rng.uniform(0.3, 1.5)), []
    positions, headings, speeds, attention = np.zeros((n, 2)), np.zeros(n), np.zeros(n), np.full(n, np.nan)
    percept = np.full((n, 5), np.nan)
    for i in range(n):
        if i >= next_speed:
            speed_target = 0.0 if rng.uniform() < 0.15 else rng.uniform(0.5, 1.6)
            next_speed = i + int(rng.uniform(1.5, 4.0) * FPS)
        if i >= next_turn:
            turn_target = 0.0 if rng.uniform() < 0.35 else rng.uniform(-1.3, 1.3)
            next_turn = i + int(rng.uniform(0.8, 2.5) * FPS)
        # the nearest landmark in front draws the gaze, and a reach when it is within arm's length or so
        landmark, bearing, gap = landmark_in_front(obstacles, x, y, heading)
        if landmark >= 0:
            attention[i] = bearing
            percept[i, 3:] = bearing, gap
            if reaching and i > reach_until + reach_cooldown and gap < REACH_GAP and abs(bearing) < REACH_BEARING:
                reach_cooldown = int(FPS * rng.uniform(1.0, 2.5))
                if rng.uniform() < 0.7:
                    side = 1.0 if bearing > 0.15 else -1.0 if bearing < -0.15 else 0.0
                    reaches.append(_Reach(i, int(rng.uniform(1.0, 2.0) * FPS), side, _reach_target(rng)))
                    reach_until = i + reaches[-1].length
        if reaching and i > reach_until + reach_cooldown and rng.uniform() < dt / 8.0:  # now and then, anywhere
            reaches.append(_Reach(i, int(rng.uniform(1.0, 2.2) * FPS), float(rng.choice([1.0, -1.0, 0.0])),
                                  _reach_target(rng)))
            reach_until, reach_cooldown = i + reaches[-1].length, int(FPS * rng.uniform(1.0, 2.5))
        ahead = look_ahead_clearance(scene, obstacles, x, y, heading, speed)
        left = look_ahead_clearance(scene, obstacles, x, y, heading + DODGE_SIDE, speed)
        right = look_ahead_clearance(scene, obstacles, x, y, heading - DODGE_SIDE, speed)
        percept[i, :3] = ahead, left, right
        if ahead < DODGE_CLEARANCE:  # something ahead: turn towards the freer side until clear
            if dodge == 0.0:
                dodge = 1.8 if left >= right else -1.8
            turn += (dodge - turn) * dt / 0.15
            speed *= 0.96
        else:
            dodge = 0.0
            turn += (turn_target - turn) * dt / 0.3
            target = 0.25 * speed_target if i <= reach_until else speed_target  # slow down while reaching
            speed += (target - speed) * dt / 0.7
        heading += turn * dt
        nx, ny = x + speed * math.cos(heading) * dt, y + speed * math.sin(heading) * dt
        if _clearance(scene, obstacles, nx, ny) > 0.45:
            x, y = nx, ny
        else:
            speed = 0.0
        positions[i], headings[i], speeds[i] = (x, y), heading, speed
    return positions, headings, speeds, attention, reaches, percept


def _reach_target(rng: np.random.Generator) -> tuple[float, float, float]:
    return float(rng.uniform(0.38, 0.5)), float(rng.uniform(-0.05, 0.12)), float(rng.uniform(-0.35, -0.05))


def _reach_curves(reaches: list[_Reach], n: int):
    """(blend (n,) in 0..1, side (n,), target (n, 3)) from the reach episodes; smoothstep ramps of 0.35 s."""
    blend, side, target = np.zeros(n), np.zeros(n), np.zeros((n, 3))
    ramp = int(0.35 * FPS)
    for reach in reaches:
        t = np.arange(reach.length)
        up = np.clip(np.minimum(t / ramp, (reach.length - 1 - t) / ramp), 0, 1)
        end = min(n, reach.start + reach.length)
        blend[reach.start:end] = (up * up * (3 - 2 * up))[: end - reach.start]
        side[reach.start:end], target[reach.start:end] = reach.side, reach.target
    return blend, side, target


def _two_bone_elbow(shoulder: np.ndarray, wrist: np.ndarray, pole: np.ndarray) -> np.ndarray:
    """(T, 3) elbow positions for upper arm / forearm lengths, bending towards ``pole`` (T, 3)."""
    axis = wrist - shoulder
    dist = np.clip(np.linalg.norm(axis, axis=-1, keepdims=True), 0.05, UPPER_ARM + FOREARM - 1e-3)
    axis = axis / np.linalg.norm(axis, axis=-1, keepdims=True)
    along = (UPPER_ARM ** 2 - FOREARM ** 2 + dist ** 2) / (2 * dist)
    out = np.sqrt(np.clip(UPPER_ARM ** 2 - along ** 2, 0, None))
    perp = pole - np.sum(pole * axis, -1, keepdims=True) * axis
    perp = perp / np.linalg.norm(perp, axis=-1, keepdims=True)
    return shoulder + along * axis + out * perp


def simulate(scene: Scene, rng: np.random.Generator, n_frames: int, look_scale: float = 1.0,
             reaching: bool = True) -> Motion:
    """A random walk of ``n_frames`` frames through ``scene``. Deterministic given ``rng``'s state.

    look_scale scales the head's look-around angles; reaching=False leaves out the reach episodes.
    """
    start = free_spot(scene, rng)
    positions, heading, speed, attention, reaches, percept = _walk(scene, rng, n_frames, start,
                                                                   float(rng.uniform(-math.pi, math.pi)), reaching)
    reach, reach_side, reach_target = _reach_curves(reaches, n_frames)
    # gaze: towards the attended landmark while there is one (half of the time), else glancing around: quick
    # head turns between targets held for well under a second, as people look around while they walk
    scanning = _piecewise(rng, n_frames, -HEAD_YAW_RANGE, HEAD_YAW_RANGE, GLANCE_HOLD_S, 0.2)
    attending = _piecewise(rng, n_frames, 0.0, 1.0, (0.6, 2.0), 0.0) < 0.3
    yaw_target = np.where(attending & np.isfinite(attention), np.clip(np.nan_to_num(attention), -1.0, 1.0), scanning)
    yaw_target = np.where(reach > 0, 0.25 * reach_side, yaw_target)  # look at the reaching hand
    look_yaw = look_scale * _follow(yaw_target, HEAD_OMEGA)
    look_pitch = look_scale * _follow(_piecewise(rng, n_frames, -0.25, 0.45, GLANCE_HOLD_S, 0.3), HEAD_OMEGA)
    time = np.arange(n_frames) / FPS

    # gait: stride frequency and amplitude follow the speed; the phase is integrated so it stays smooth
    amplitude = np.clip(speed / 1.3, 0, 1.2)  # (T,)
    phase = np.cumsum(2 * math.pi * (0.6 + 0.25 * np.clip(speed, 0, 1.6) / 1.3) / FPS) + rng.uniform(0, 2 * math.pi)
    look_pitch = look_pitch + 0.45 * reach  # look down at the hands

    local = np.zeros((n_frames, NUM_JOINTS, 3))  # body frame, origin on the ground under the pelvis
    pelvis_z = 0.93 - 0.02 * amplitude + 0.025 * amplitude * np.cos(2 * phase)
    pelvis = np.stack([np.zeros(n_frames), 0.02 * amplitude * np.sin(phase), pelvis_z], -1)  # (T, 3)
    for s, name in ((1.0, "left"), (-1.0, "right")):
        leg_phase = phase if s > 0 else phase + math.pi
        hip = pelvis + [0.0, 0.10 * s, 0.0]
        thigh = 0.42 * amplitude * np.sin(leg_phase)
        knee_bend = 0.1 + 0.8 * amplitude * np.clip(np.cos(leg_phase - 0.3), 0, 1) ** 1.5
        knee = hip + THIGH * np.stack([np.sin(thigh), np.zeros(n_frames), -np.cos(thigh)], -1)
        ankle = knee + SHIN * np.stack([np.sin(thigh - knee_bend), np.zeros(n_frames), -np.cos(thigh - knee_bend)], -1)
        local[:, JOINT_INDEX[f"{name}-hip"]], local[:, JOINT_INDEX[f"{name}-knee"]] = hip, knee
        local[:, JOINT_INDEX[f"{name}-ankle"]] = ankle

    lean = 0.03 + 0.06 * amplitude
    neck = pelvis + np.stack([0.5 * np.sin(lean), np.zeros(n_frames), 0.5 * np.cos(lean)], -1)
    twist = -0.12 * amplitude * np.sin(phase)
    twist_rot = _rot_z(twist)  # (T, 3, 3)
    for s, name in ((1.0, "left"), (-1.0, "right")):
        arm_phase = phase if s > 0 else phase + math.pi
        shoulder = neck + np.einsum("tij,j->ti", twist_rot, [0.0, 0.19 * s, -0.03])
        swing = -0.38 * amplitude * np.sin(arm_phase)
        bend = 0.2 + 0.3 * amplitude * (0.5 - 0.5 * np.sin(arm_phase))
        upper = np.stack([np.sin(swing), np.full(n_frames, 0.08 * s), -np.cos(swing)], -1)
        elbow = shoulder + UPPER_ARM * upper / np.linalg.norm(upper, axis=-1, keepdims=True)
        fore = np.stack([np.sin(swing + bend), np.full(n_frames, 0.05 * s), -np.cos(swing + bend)], -1)
        wrist = elbow + FOREARM * fore / np.linalg.norm(fore, axis=-1, keepdims=True)
        # reaching: this hand goes to a target in front of the chest (with a small manipulating circle)
        active = reach * ((reach_side == s) | (reach_side == 0))  # (T,)
        circle = 2 * math.pi * 1.2 * time
        wobble = 0.04 * np.stack([np.zeros(n_frames), np.cos(circle), np.sin(circle)], -1)
        target = shoulder + reach_target * [1.0, -s, 1.0] + wobble
        reach_wrist = wrist + active[:, None] * (target - wrist)
        pole = np.broadcast_to(np.array([0.0, 0.6 * s, -1.0]), (n_frames, 3))
        reach_elbow = _two_bone_elbow(shoulder, reach_wrist, pole)
        elbow = elbow + active[:, None] * (reach_elbow - elbow)
        local[:, JOINT_INDEX[f"{name}-shoulder"]], local[:, JOINT_INDEX[f"{name}-elbow"]] = shoulder, elbow
        local[:, JOINT_INDEX[f"{name}-wrist"]] = reach_wrist

    head_rot = _rot_z(look_yaw + 0.5 * twist) @ _rot_y(look_pitch) @ _rot_x(0.04 * amplitude * np.sin(phase))
    head_centre = neck + [0.02, 0.0, 0.12] + head_rot @ np.array([0.0, 0.0, 0.10])
    for name, point in FACE_POINTS.items():
        local[:, JOINT_INDEX[name]] = head_centre + head_rot @ np.array(point)
    camera_local = head_centre + head_rot @ np.array(CAMERA_IN_HEAD_CENTRE)
    camera_rot_local = head_rot @ _rot_y(np.array(CAMERA_TILT)) @ CAMERA_IN_HEAD  # (T, 3, 3)

    body_rot = _rot_z(heading)  # body -> world
    offset = np.concatenate([positions, np.zeros((n_frames, 1))], 1)[:, None, :]
    joints = np.einsum("tij,tkj->tki", body_rot, local) + offset
    cam_to_world = np.tile(np.eye(4), (n_frames, 1, 1))
    cam_to_world[:, :3, :3] = body_rot @ camera_rot_local
    cam_to_world[:, :3, 3] = np.einsum("tij,tj->ti", body_rot, camera_local) + offset[:, 0]
    return Motion(joints, cam_to_world, heading, speed, reach, positions, percept)


@dataclass(frozen=True)
class Outfit:
    shirt: Material
    trousers: Material
    skin: Material
    shoes: Material


def random_outfit(rng: np.random.Generator) -> Outfit:
    def plain(h, s, v):
        c = tuple(float(x) for x in colorsys.hsv_to_rgb(h % 1, s, v))
        return Material(c, c)

    return Outfit(plain(rng.uniform(), rng.uniform(0.4, 0.9), rng.uniform(0.4, 0.9)),
                  plain(rng.uniform(), rng.uniform(0.2, 0.7), rng.uniform(0.2, 0.6)),
                  plain(rng.uniform(0.04, 0.09), rng.uniform(0.3, 0.6), rng.uniform(0.45, 0.95)),
                  plain(0.0, 0.0, rng.uniform(0.1, 0.3)))


def body_solids(joints: np.ndarray, heading: float, outfit: Outfit) -> list[Solid]:
    """Capsules and spheres of one frame's body (no head: the camera is inside it). joints: (17, 3) world."""
    j = {name: tuple(float(v) for v in joints[i]) for name, i in JOINT_INDEX.items()}
    forward = np.array([math.cos(heading), math.sin(heading), 0.0])
    solids = []
    for side in ("left", "right"):
        elbow, wrist = np.array(j[f"{side}-elbow"]), np.array(j[f"{side}-wrist"])
        hand = wrist + 0.07 * (wrist - elbow) / max(np.linalg.norm(wrist - elbow), 1e-6)
        ankle = np.array(j[f"{side}-ankle"])
        solids += [
            Solid("capsule", j[f"{side}-shoulder"], (0.05, 0, 0), outfit.shirt, end=j[f"{side}-elbow"]),
            Solid("capsule", j[f"{side}-elbow"], (0.04, 0, 0), outfit.skin, end=j[f"{side}-wrist"]),
            Solid("sphere", tuple(hand.tolist()), (0.05, 0, 0), outfit.skin),
            Solid("capsule", j[f"{side}-hip"], (0.075, 0, 0), outfit.trousers, end=j[f"{side}-knee"]),
            Solid("capsule", j[f"{side}-knee"], (0.06, 0, 0), outfit.trousers, end=j[f"{side}-ankle"]),
            Solid("capsule", tuple(ankle.tolist()), (0.05, 0, 0), outfit.shoes,
                  end=tuple((ankle + 0.15 * forward - [0, 0, 0.04]).tolist())),
        ]
    hips = (np.array(j["left-hip"]) + np.array(j["right-hip"])) / 2
    shoulders = (np.array(j["left-shoulder"]) + np.array(j["right-shoulder"])) / 2
    solids.append(Solid("capsule", tuple((hips + [0, 0, 0.1]).tolist()), (0.15, 0, 0), outfit.shirt,
                        end=tuple((shoulders - [0, 0, 0.1]).tolist())))
    return solids
