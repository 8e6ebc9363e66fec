"""3D motion prediction metrics and baselines (the protocol: eval_3dposes.py --help).

A clip has 20 pose frames at 30 fps (indices 0..19): frames 0..4 are the input, 5..19 the 15 predicted targets.
Positions are metres in the camera frame; errors are reported in cm and cm/s.
- MPJPE: mean over (clip, frame, joint) with the joint visible in the target of |pred - true|.
- MPJVE: the same for velocities. "@30fps": v_i = (p_i - p_{i-1}) * 30 for i = 5..19; "@10fps": every third
  predicted frame i (FRAMES_10FPS) and v_i = (p_i - p_{i-3}) * 10. The true input poses (p_2..p_4) start the
  velocities of the prediction too. A velocity counts only when the joint is visible in the target at both ends.
- MPJPE@10fps is the MPJPE over the same frames. Which frames (FRAMES_10FPS): "from_first" (the default) 5, 8, 11,
  14, 17, every third predicted frame starting from the first; "to_last" 7, 10, 13, 16, 19, ending at the last.
  Errors grow with the horizon, so a subset ending at the last frame is above the mean over all 15 (MPJPE@10fps
  above @30fps), while in the paper's Table 3 every method's @10fps is below its @30fps: "from_first" is the
  subset consistent with it (its frames lie on average 1 frame earlier than the 15 frames' mean, "to_last"'s 1 later).
Errors are kept as sums and counts (``MotionErrorSums``) so ranks can add them up before dividing.
"""

from __future__ import annotations

import math

import torch

from internlm.model.pose_ops import block_xyz, fill_unseen, last_observed_pose, last_two_visible, pose_at

FPS = 30
CLIP_FRAMES = 20
INPUT_FRAMES = 5
HORIZON = CLIP_FRAMES - INPUT_FRAMES  # 15 predicted frames
# every third predicted frame, at 10 fps (see the module docstring for why "from_first" is the default)
FRAMES_10FPS = {"from_first": (5, 8, 11, 14, 17), "to_last": (7, 10, 13, 16, 19)}
DEFAULT_10FPS = "from_first"
M_TO_CM = 100.0


def poses_from_blocks(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., T, 4, F, J) step blocks (x, y, z, visibility) -> xyz (..., T*F, J, 3), visible (..., T*F, J) bool."""
    xyz, visible = block_xyz(blocks)  # (..., T, F, J, 3), (..., T, F, J)
    return xyz.flatten(-4, -3), visible.flatten(-3, -2)


def _velocity_errors(full_pred: torch.Tensor, target: torch.Tensor, visible: torch.Tensor, frames, lag: int,
                     fps_of_lag: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per listed frame i: (sum of |v_pred - v_true| in cm/s over valid joints, count); v_i = (p_i - p_{i-lag})."""
    i = torch.as_tensor(frames, device=target.device)
    v_pred = (full_pred[:, i] - full_pred[:, i - lag]) * fps_of_lag  # (N, n, J, 3)
    v_true = (target[:, i] - target[:, i - lag]) * fps_of_lag
    valid = visible[:, i] & visible[:, i - lag]  # (N, n, J)
    err = (v_pred - v_true).norm(dim=-1) * M_TO_CM
    return (err * valid).sum(dim=(0, 2)).double(), valid.sum(dim=(0, 2)).double()


class MotionErrorSums:
    """Sums and counts of one predictor's errors, accumulated over batches (and ranks: ``as_tensor`` /
    ``from_tensor`` round-trip through one all-reduce)."""

    def __init__(self, frames_10fps: str = DEFAULT_10FPS):
        if frames_10fps not in FRAMES_10FPS:
            raise ValueError(f"frames_10fps={frames_10fps!r}: expected one of {', '.join(FRAMES_10FPS)}")
        self.frames_10fps = frames_10fps
        self.pos_sum = torch.zeros(HORIZON, dtype=torch.float64)  # per target frame 5..19, cm
        self.pos_count = torch.zeros(HORIZON, dtype=torch.float64)
        self.vel30_sum = torch.zeros(HORIZON, dtype=torch.float64)  # per target frame, cm/s
        self.vel30_count = torch.zeros(HORIZON, dtype=torch.float64)
        self.vel10_sum = torch.zeros(len(FRAMES_10FPS[frames_10fps]), dtype=torch.float64)
        self.vel10_count = torch.zeros(len(FRAMES_10FPS[frames_10fps]), dtype=torch.float64)

    def add(self, pred: torch.Tensor, target: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """pred (N, 15, J, 3) frames 5..19; target (N, 20, J, 3) and visible (N, 20, J) the whole clip.
        Returns each clip's own MPJPE@30fps (N,) in cm (for paired comparisons between predictors)."""
        if pred.shape[1] != HORIZON or target.shape[1] != CLIP_FRAMES:
            raise ValueError(f"expected pred (N, {HORIZON}, J, 3) and target (N, {CLIP_FRAMES}, J, 3), got "
                             f"{tuple(pred.shape)} and {tuple(target.shape)}")
        pred, target = pred.double().cpu(), target.double().cpu()
        visible = visible.cpu()
        full_pred = torch.cat([target[:, :INPUT_FRAMES], pred], dim=1)  # (N, 20, J, 3): true inputs
        vis_t = visible[:, INPUT_FRAMES:]  # (N, 15, J)
        err = (pred - target[:, INPUT_FRAMES:]).norm(dim=-1) * M_TO_CM  # (N, 15, J)
        per_clip_frame = (err * vis_t).sum(dim=2)  # (N, 15)
        visible_per_clip_frame = vis_t.sum(dim=2)
        self.pos_sum += per_clip_frame.sum(dim=0)
        self.pos_count += visible_per_clip_frame.sum(dim=0)
        s, c = _velocity_errors(full_pred, target, visible, range(INPUT_FRAMES, CLIP_FRAMES), 1, FPS)
        self.vel30_sum += s
        self.vel30_count += c
        s, c = _velocity_errors(full_pred, target, visible, FRAMES_10FPS[self.frames_10fps], 3, FPS / 3)
        self.vel10_sum += s
        self.vel10_count += c
        return per_clip_frame.sum(dim=1) / visible_per_clip_frame.sum(dim=1).clamp_min(1)

    def as_tensor(self) -> torch.Tensor:  # (4 * 15 + 2 * 5,) float64 (frames_10fps is not in it)
        return torch.cat([self.pos_sum, self.pos_count, self.vel30_sum, self.vel30_count, self.vel10_sum,
                          self.vel10_count])

    @classmethod
    def from_tensor(cls, flat: torch.Tensor, frames_10fps: str = DEFAULT_10FPS) -> "MotionErrorSums":
        out = cls(frames_10fps)
        parts = flat.double().cpu().split([HORIZON] * 4 + [len(FRAMES_10FPS[frames_10fps])] * 2)
        (out.pos_sum, out.pos_count, out.vel30_sum, out.vel30_count, out.vel10_sum, out.vel10_count) = parts
        return out

    def summary(self) -> dict:
        """MPJPE (cm) / MPJVE (cm/s) at 30 and 10 fps, per horizon, and the counts behind them."""
        def mean(s, c):
            return float(s.sum() / c.sum()) if float(c.sum()) > 0 else float("nan")

        idx10 = [f - INPUT_FRAMES for f in FRAMES_10FPS[self.frames_10fps]]
        return {
            "mpjpe_30fps": mean(self.pos_sum, self.pos_count),
            "mpjve_30fps": mean(self.vel30_sum, self.vel30_count),
            "mpjpe_10fps": mean(self.pos_sum[idx10], self.pos_count[idx10]),
            "mpjve_10fps": mean(self.vel10_sum, self.vel10_count),
            "frames_10fps": list(FRAMES_10FPS[self.frames_10fps]),
            "per_horizon": {
                "frame": list(range(INPUT_FRAMES, CLIP_FRAMES)),
                "ms_after_last_input": [round(1000.0 * (f - INPUT_FRAMES + 1) / FPS, 1)
                                        for f in range(INPUT_FRAMES, CLIP_FRAMES)],
                "mpjpe": [mean(self.pos_sum[h:h + 1], self.pos_count[h:h + 1]) for h in range(HORIZON)],
                "mpjve": [mean(self.vel30_sum[h:h + 1], self.vel30_count[h:h + 1]) for h in range(HORIZON)],
            },
            "counts": {"joint_positions": int(self.pos_count.sum()), "joint_velocities_30fps":
                       int(self.vel30_count.sum()), "joint_velocities_10fps": int(self.vel10_count.sum())},
        }


# ----------------------------------------------------------------------------------------------- baselines


def paired_mpjpe_difference(a: torch.Tensor, b: torch.Tensor) -> dict:
    """Per-clip MPJPE@30fps a - b over the same clips: the mean difference and its standard error (of the mean of
    the paired differences)."""
    d = a - b
    se = float(d.std(unbiased=True)) / math.sqrt(d.numel()) if d.numel() > 1 else float("nan")
    return {"mpjpe_30fps_diff": float(d.mean()), "mpjpe_30fps_diff_se": se, "num_clips": d.numel()}


def zero_velocity(xyz_in: torch.Tensor, visible_in: torch.Tensor, horizon: int = HORIZON) -> torch.Tensor:
    """Every future frame = the last observed pose: per joint, its last visible position among the input
    frames (a joint never seen: the mean of the seen ones). (N, F, J, 3), (N, F, J) -> (N, horizon, J, 3)."""
    pose = last_observed_pose(xyz_in, visible_in)  # (N, J, 3)
    return pose.unsqueeze(1).expand(-1, horizon, -1, -1).clone()


def constant_velocity(xyz_in: torch.Tensor, visible_in: torch.Tensor, horizon: int = HORIZON) -> torch.Tensor:
    """Extrapolate each joint's last observed per-frame velocity.

    Rule for invisible joints: the velocity comes from the joint's last two VISIBLE input frames a < b,
    v = (p_b - p_a) / (b - a) per frame, and the joint moves on from p_b: p_i = p_b + (i - b) v for the future
    frame i (for a joint visible in the last two frames this is the plain p_4 + k (p_4 - p_3)). A joint seen
    once keeps that position (zero velocity); a joint never seen takes the zero-velocity baseline's value.
    (N, F, J, 3), (N, F, J) -> (N, horizon, J, 3)."""
    F = xyz_in.shape[1]
    last, before = last_two_visible(visible_in)  # (N, J)
    p_b, p_a = pose_at(xyz_in, last), pose_at(xyz_in, before)  # (N, J, 3)
    has_two = (before >= 0).unsqueeze(-1)
    gap = (last - before).clamp_min(1).unsqueeze(-1).to(xyz_in.dtype)
    velocity = torch.where(has_two, (p_b - p_a) / gap, torch.zeros_like(p_b))  # (N, J, 3) per frame
    start = fill_unseen(p_b, last >= 0)
    future = torch.arange(F, F + horizon, device=xyz_in.device, dtype=xyz_in.dtype)  # (H,)
    steps = future.view(1, -1, 1) - last.clamp_min(0).unsqueeze(1).to(xyz_in.dtype)  # (N, H, J) frames since p_b
    return start.unsqueeze(1) + steps.unsqueeze(-1) * velocity.unsqueeze(1)
