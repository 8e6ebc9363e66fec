"""Random tensors with the real sample shapes (dataset_type "Generated"): for benchmarks and smoke tests of the
training step without any data on disk. Deterministic per draw, like the real datasets."""

from __future__ import annotations

import torch

from internlm.config.schema import DataConfig
from internlm.model.reprojection import STILL_STEP

from .sampler import sample_rng
from .transforms import clip_color_change


class GeneratedSamples(torch.utils.data.Dataset):
    def __init__(self, cfg: DataConfig, joint: bool, length: int = 1_000_000):
        self.cfg = cfg
        self.joint = joint
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key) -> dict:
        index, draw_id = key if isinstance(key, tuple) else (key, key)
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + int(draw_id))
        c = self.cfg
        n_local = c.local_crops_number if c.use_local_crop else 0
        sample = {
            "global_crops": torch.randn(2, 3, c.vid_crop_size, c.vid_crop_size, generator=g),
            "local_crops": torch.randn(n_local, 3, c.local_crop_size, c.local_crop_size, generator=g),
            "sample_id": int(index),
            "num_skipped": 0,
        }
        if self.joint:
            T, F = c.clip_steps, c.steps_per_clip
            xyz = torch.randn(T, 3, F, 17, generator=g).cumsum(dim=2) * 0.05
            visible = (torch.rand(T, 1, F, 17, generator=g) > 0.1).float()
            sample["frames"] = torch.randn(T, 3, c.pred_img_size, c.pred_img_size, generator=g)
            if c.clip_color_change:
                sample["student_frames"] = clip_color_change(sample["frames"], sample_rng(c.seed, int(draw_id)))
            sample["poses"] = torch.cat([torch.where(visible.bool(), xyz, torch.full_like(xyz, -1.0)), visible], 1)
            sample["take_uid"] = f"generated_{index % 7}"
            sample["frame_ids"] = torch.arange(T, dtype=torch.long) * F + 5 * int(index)
            if c.camera_motion:  # a rotation of a few degrees and a step of a few cm per step; the last step still
                w = torch.randn(T, 3, generator=g) * 0.1  # axis-angle (rad)
                skew = torch.zeros(T, 3, 3)
                skew[:, 0, 1], skew[:, 0, 2], skew[:, 1, 2] = -w[:, 2], w[:, 1], -w[:, 0]
                rotation = torch.linalg.matrix_exp(skew - skew.transpose(1, 2))  # (T, 3, 3)
                shift = torch.randn(T, 3, generator=g) * 0.05
                motion = torch.cat([rotation.flatten(1), shift], dim=1)  # (T, 12)
                motion[-1] = torch.tensor(STILL_STEP)
                sample["camera_motion"] = motion
                sample["focal"] = torch.tensor(0.43 * c.pred_img_size)  # a ~100 degree field of view
        return sample
