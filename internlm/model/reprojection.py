"""A frame seen through a camera rotation: the geometric part of "what frame t+1 looks like given the action".

Frames are pinhole images (the undistorted Aria frames) with the principal point at the centre and one focal
length f in pixels. A pure rotation R of the camera (camera-t -> camera-(t+1) coordinates, as
``EgoExoClips.step_camera_motion`` gives it) maps the ray d of pixel p of the new view to R^T d in the old one,
so the new view is the old frame resampled there; pixels whose ray leaves the old frame repeat its border (what
comes into view is unknown). The camera's translation is left out: its parallax needs depth.

``model.prediction_reprojection`` uses it for the base of the residual state prediction (the teacher's view of
frame t reprojected by the step's camera rotation); the retrieval eval uses it for its "reprojection" baseline.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MOTION_DIM = 12  # camera motion of one step: 9 entries of the rotation (row-major) + 3 of the displacement
STILL_STEP = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0)  # no motion: identity rotation, no shift


def rotate_view(frames: torch.Tensor, rotation: torch.Tensor, focal: torch.Tensor) -> torch.Tensor:
    """frames (N, 3, S, S), rotation (N, 3, 3) camera-t -> camera-(t+1), focal (N,) pixels at size S ->
    (N, 3, S, S) the frames as the rotated camera sees them (bilinear; border pixels repeated)."""
    N, _, S, W = frames.shape
    if S != W:
        raise ValueError(f"rotate_view expects square frames, got {S}x{W}")
    c = (S - 1) / 2
    axis = torch.arange(S, dtype=torch.float32, device=frames.device)
    v, u = torch.meshgrid(axis, axis, indexing="ij")
    f = focal.float().to(frames.device).view(N, 1, 1)
    rays = torch.stack([(u - c) / f, (v - c) / f, torch.ones_like(u).expand(N, S, S)], dim=-1)  # (N, S, S, 3)
    old = rays.view(N, -1, 3) @ rotation.float().to(frames.device)  # rows d^T R = (R^T d)^T: (N, S*S, 3)
    z = old[..., 2].clamp_min(1e-3)  # a ray behind the old camera samples the border
    x, y = f.view(N, 1) * old[..., 0] / z + c, f.view(N, 1) * old[..., 1] / z + c  # (N, S*S) pixels of frame t
    grid = torch.stack([x, y], dim=-1).view(N, S, S, 2) * (2 / (S - 1)) - 1  # grid_sample's [-1, 1]
    out = F.grid_sample(frames.float(), grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out.to(frames.dtype)


def reproject_steps(frames: torch.Tensor, camera_motion: torch.Tensor, focal: torch.Tensor) -> torch.Tensor:
    """frames (B, T, 3, P, P), camera_motion (B, T, 12) (step t: from the image of step t to that of t+1),
    focal (B,) -> (B, T, 3, P, P): the image of every step seen through its step's camera rotation."""
    B, T = frames.shape[:2]
    rotation = camera_motion[..., :9].reshape(B * T, 3, 3)
    flat = rotate_view(frames.flatten(0, 1), rotation, focal.repeat_interleave(T))
    return flat.view_as(frames)
