"""The meta-architecture: student and EMA teacher, their losses, the DINO centers and the teacher update.

Parallel wrappers (DDP, FSDP2) are applied to ``student``/``teacher`` from outside (internlm/parallel); this class
only calls their ``forward``, so it works the same wrapped or not.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from internlm.config.schema import TrainConfig
from internlm.model import EgoAgent

from .losses import action_loss, dino_multicrop_loss, prediction_loss, teacher_probs

# Order of the per-step statistics vector (summed over chunks and ranks, then divided by its count).
STAT_NAMES = ("loss_rep", "loss_pred", "loss_act_sum", "teacher_entropy", "kl_teacher_student", "feature_std")


@dataclass
class ChunkResult:
    loss: torch.Tensor  # scalar to backpropagate (already weighted for the chunk's share of the step)
    stats: torch.Tensor  # (len(STAT_NAMES),) fp32, per-sample means weighted by the chunk size, see STAT_NAMES
    rep_center_sum: torch.Tensor  # (K,) sum of the teacher's global-view logits
    rep_center_count: int
    pred_center_sum: Optional[torch.Tensor]  # (K,) sum of the teacher's target-frame logits
    pred_center_count: int


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor (FSDP2), the tensor itself otherwise."""
    return t.to_local() if hasattr(t, "to_local") else t


class EgoAgentMetaArch(nn.Module):
    def __init__(self, cfg: TrainConfig, student: EgoAgent):
        super().__init__()
        self.cfg = cfg
        self.joint = cfg.loss.is_joint
        self.student = student
        self.teacher = copy.deepcopy(student)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        K = cfg.model.output_dim
        self.register_buffer("rep_center", torch.zeros(K))
        self.register_buffer("pred_center", torch.zeros(K))

    # ------------------------------------------------------------------------------------------ losses

    def chunk_losses(self, chunk: dict, teacher_temp: float, chunk_weight: float,
                     act_normalizer: Optional[torch.Tensor]) -> ChunkResult:
        """Forward teacher and student on one gradient-accumulation chunk.

        chunk: global_crops (B, 2, 3, G, G), local_crops (B, n, 3, L, L) and, in stage 2, frames (B, T, 3, P, P),
        poses (B, T, 4, 5, 17). chunk_weight = B / per-rank batch, so the chunks of a step add up to the mean.
        """
        lc = self.cfg.loss
        globals_ = chunk["global_crops"]
        B, n_global = globals_.shape[:2]
        g_views = globals_.transpose(0, 1).flatten(0, 1)  # (2B, 3, G, G), view-major: view v = rows v*B:(v+1)*B
        locals_ = chunk["local_crops"]
        n_local = locals_.shape[1]
        student_views = [g_views]
        if n_local:
            student_views.append(locals_.transpose(0, 1).flatten(0, 1))  # (nB, 3, L, L)
        frames = chunk.get("frames") if self.joint else None
        poses = chunk.get("poses") if self.joint else None

        with torch.no_grad():
            teacher_views = [g_views] + ([frames.flatten(0, 1)] if self.joint else [])
            t_out = self.teacher(views=teacher_views)
        t_global = t_out.views[0].logits.float()  # (2B, K)
        s_out = self.student(views=student_views, frames=frames, poses=poses)

        s_logits = list(s_out.views[0].logits.chunk(n_global))
        if n_local:
            s_logits += list(s_out.views[1].logits.chunk(n_local))
        rep_center = self.rep_center
        loss_rep = dino_multicrop_loss(s_logits, list(t_global.chunk(n_global)), rep_center, teacher_temp,
                                       lc.student_temp)
        loss = lc.rep_weight * loss_rep * chunk_weight
        zero = loss_rep.new_zeros(())
        loss_pred, act_sum, pred_sum, pred_count = zero, zero, None, 0
        if self.joint:
            T = frames.shape[1]
            t_frames = t_out.views[1].logits.float().view(B, T, -1)  # (B, T, K)
            loss_pred = prediction_loss(s_out.joint.future_logits, t_frames, self.pred_center, teacher_temp,
                                        lc.student_temp)
            loss_act = action_loss(s_out.joint.actions, poses, act_normalizer)
            act_sum = loss_act.detach() * act_normalizer if act_normalizer is not None else loss_act.detach()
            loss = loss + lc.pred_weight * loss_pred * chunk_weight + lc.act_weight * loss_act
            targets = t_frames[:, 1:].reshape(-1, t_frames.shape[-1])
            pred_sum, pred_count = targets.sum(0), targets.shape[0]

        with torch.no_grad():
            q = teacher_probs(t_global[:B], rep_center, teacher_temp)  # teacher view 0
            entropy = -(q * torch.log(q.clamp_min(1e-12))).sum(-1).mean()
            log_s = F.log_softmax(s_logits[0].float() / lc.student_temp, dim=-1)  # student on the same view
            kl = (q * (torch.log(q.clamp_min(1e-12)) - log_s)).sum(-1).mean()
            feats = F.normalize(s_out.views[0].feature[:B].float(), dim=-1)
            feat_std = feats.std(dim=0).mean() if B > 1 else zero
            # act_sum is a sum (normalised once per step); the others are means, weighted by the chunk's share
            weights = torch.tensor([chunk_weight, chunk_weight, 1.0, chunk_weight, chunk_weight, chunk_weight],
                                   device=loss.device)
            stats = torch.stack([loss_rep.detach(), loss_pred.detach(), act_sum, entropy, kl, feat_std]).float()
            stats = stats * weights
        return ChunkResult(loss, stats, t_global.sum(0), t_global.shape[0], pred_sum, pred_count)

    # ---------------------------------------------------------------------------------- teacher and centers

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """p_t = m p_t + (1 - m) p_s for every parameter (local shards under FSDP2)."""
        for model in (self.teacher, self.student):
            if hasattr(model, "reshard"):  # FSDP2 keeps the root's parameters gathered after a forward
                model.reshard()
        t_params = [local_tensor(p) for p in self.teacher.parameters()]
        s_params = [local_tensor(p.detach()) for p in self.student.parameters()]
        torch._foreach_mul_(t_params, momentum)
        torch._foreach_add_(t_params, s_params, alpha=1.0 - momentum)

    @torch.no_grad()
    def update_centers(self, rep_sum: torch.Tensor, rep_count: int, pred_sum: Optional[torch.Tensor],
                       pred_count: int) -> None:
        """c = m c + (1 - m) batch mean of the teacher logits, the mean taken over all ranks."""
        m = self.cfg.loss.center_momentum
        sums = [rep_sum] + ([pred_sum] if pred_sum is not None else [])
        counts = torch.tensor([float(rep_count), float(pred_count)], device=rep_sum.device)
        if dist.is_initialized() and dist.get_world_size() > 1:
            flat = torch.cat(sums)
            dist.all_reduce(flat)
            sums = list(flat.split([s.numel() for s in sums]))
            dist.all_reduce(counts)
        self.rep_center.mul_(m).add_(sums[0] / counts[0], alpha=1 - m)
        if pred_sum is not None:
            self.pred_center.mul_(m).add_(sums[1] / counts[1], alpha=1 - m)
