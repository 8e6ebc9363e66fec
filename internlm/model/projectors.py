"""Input projectors of EgoAgent (paper Table 8): frames and pose blocks become continuous tokens."""

import torch
from torch import nn


class ImageProjector(nn.Module):
    """Conv2d(3, d, patch, stride patch): a 224 px frame -> 14 x 14 = 196 tokens (112 px -> 49)."""

    def __init__(self, hidden_size: int, patch_size: int = 16):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(3, hidden_size, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, H/p * W/p, d)
        if images.shape[-1] % self.patch_size or images.shape[-2] % self.patch_size:
            raise ValueError(f"image size {tuple(images.shape[-2:])} is not a multiple of the patch size "
                             f"{self.patch_size}")
        return self.proj(images).flatten(2).transpose(1, 2)


class ActionProjector(nn.Module):
    """A pose block (x, y, z, visibility) x 5 frames x 17 joints -> Conv2d(4, d, (5, 17)) -> LayerNorm -> GELU:
    one action token.

    ``normalize``: x, y, z are first standardised per joint and axis with the training set's statistics
    (buffers ``pose_mean``/``pose_std`` (3, 1, J), set by ``set_pose_statistics`` before training and saved
    with the weights), and a joint that is not visible enters as 0 (its mean) instead of the -1 placeholder."""

    def __init__(self, hidden_size: int, channels: int = 4, frames: int = 5, joints: int = 17,
                 normalize: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(channels, hidden_size, kernel_size=(frames, joints))
        self.norm = nn.LayerNorm(hidden_size)
        self.act = nn.GELU()
        self.normalize = normalize
        if normalize:
            self.register_buffer("pose_mean", torch.zeros(3, 1, joints))
            self.register_buffer("pose_std", torch.ones(3, 1, joints))

    @torch.no_grad()
    def set_pose_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """mean, std (3, J): per axis and joint, over the visible joints of the training clips."""
        self.pose_mean.copy_(mean.reshape(self.pose_mean.shape))
        self.pose_std.copy_(std.clamp_min(1e-3).reshape(self.pose_std.shape))

    def forward(self, poses: torch.Tensor) -> torch.Tensor:  # (B, 4, 5, 17) -> (B, d)
        if self.normalize:
            visible = poses[:, 3:4]  # (B, 1, 5, 17)
            xyz = (poses[:, :3] - self.pose_mean.to(poses.dtype)) / self.pose_std.to(poses.dtype) * visible
            poses = torch.cat([xyz, visible], dim=1)
        x = self.conv(poses).flatten(1)  # (B, d), the compute dtype under autocast
        # CUDA autocast runs LayerNorm in fp32; the token goes back to the conv's dtype, else it would promote the
        # whole joint sequence (torch.cat with the image tokens) and its residual stream to fp32
        return self.act(self.norm(x)).to(x.dtype)
