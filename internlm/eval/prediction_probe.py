"""How much of frame t+1 can the camera's own motion buy in a checkpoint's representation? A probe.

The probe is a state-prediction head on the frozen teacher, given the best action there is: input = the
teacher's feature of frame t (its state-query output) and the exact camera motion of the step from the extrinsics
(``EgoExoClips.step_camera_motion``, standardised with the training clips' statistics); output = a change added
to the copy prediction of frame t (``DINOHead(zero_gain=True)``: the untrained probe *is* the copy baseline).
Trained on the training clips with L_pred towards the teacher's frame t+1 (the paper's objective) or, with
H > 1 hypotheses, winner-takes-all: each query pays only for its best hypothesis, and a selector learns which one
that is (it picks the query at evaluation): a mode-seeking prediction instead of L_pred's mixture over the
possible next frames. Evaluated on the training clips and on held-out clips with the retrieval protocol's gallery
and similarity (``LogitSpace``): copy, probe, probe given another clip's camera motion, oracle.

Reading it: L_pred below the copy's with Top-1 not above it says the loss's optimum (a prediction spread over the
possible next frames) is not what retrieval among near-identical neighbouring frames rewards; the gap between the
training and held-out clips says how much of the change depends on what only the training clips showed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from internlm.eval.retrieval import (
    LogitSpace,
    deduplicate,
    paired_difference,
    rank_statistics,
    retrieval_ranks,
    step_keys,
)
from internlm.model.heads import DINOHead
from internlm.model.reprojection import MOTION_DIM  # EgoExoClips.step_camera_motion: 9 rotation + 3 shift
from internlm.train.losses import prediction_minimiser, teacher_probs
from internlm.train.losses.dino_loss import cross_entropy


@dataclass
class ProbeSet:
    """One query per clip step t = 0..T-2 (Q in all)."""

    features: torch.Tensor  # (Q, d) the teacher's feature of frame t
    copy: torch.Tensor  # (Q, K) the copy prediction of frame t (student logits)
    target_probs: torch.Tensor  # (Q, K) the teacher's distribution of frame t+1 (L_pred's target)
    target_logits: torch.Tensor  # (Q, K) the teacher's logits of frame t+1 (the gallery side)
    motion: torch.Tensor  # (Q, 12) the camera motion from frame t to t+1
    current: list  # (take, frame) of frame t, per query
    target: list  # (take, frame) of frame t+1, per query


@torch.no_grad()
def collect_probe_set(teacher: nn.Module, dataset, batches, center: torch.Tensor, teacher_temp: float,
                      student_temp: float, device) -> ProbeSet:
    """Runs the teacher over every clip of ``batches`` (an eval loader of ``dataset``) once."""
    parts = {k: [] for k in ("features", "copy", "target_probs", "target_logits", "motion")}
    current, target = [], []
    for batch in batches:
        frames = batch["frames"].to(device)  # (B, T, 3, P, P)
        B, T = frames.shape[:2]
        rep = teacher.represent(frames.flatten(0, 1))
        feature, logits = (x.unflatten(0, (B, T)).float() for x in (rep.feature, rep.logits))  # (B, T, d|K)
        now, nxt = logits[:, :-1].flatten(0, 1), logits[:, 1:].flatten(0, 1)  # (B*(T-1), K)
        parts["features"].append(feature[:, :-1].flatten(0, 1))
        parts["copy"].append(prediction_minimiser(now, center, teacher_temp, student_temp))
        parts["target_probs"].append(teacher_probs(nxt, center, teacher_temp))
        parts["target_logits"].append(nxt)
        motion = np.stack([dataset.step_camera_motion(int(i)) for i in batch["sample_id"]])  # (B, T-1, 12)
        parts["motion"].append(torch.from_numpy(motion).flatten(0, 1))
        keys = step_keys(batch)
        current += keys[0]
        target += keys[1]
    got = {k: torch.cat(v).float().cpu() for k, v in parts.items()}
    return ProbeSet(current=current, target=target, **got)


class MotionProbe(nn.Module):
    """(teacher feature of frame t, camera motion of the step) -> H changes to the copy prediction, and (H > 1)
    which of them to use."""

    def __init__(self, feature_dim: int, out_dim: int, hypotheses: int = 1, hidden_dim: int = 512,
                 bottleneck_dim: int = 128):
        super().__init__()
        in_dim = feature_dim + MOTION_DIM
        self.heads = nn.ModuleList(DINOHead(in_dim, out_dim, hidden_dim, bottleneck_dim, zero_gain=True)
                                   for _ in range(hypotheses))
        self.selector = nn.Linear(in_dim, hypotheses) if hypotheses > 1 else None
        self.register_buffer("motion_mean", torch.zeros(MOTION_DIM))
        self.register_buffer("motion_std", torch.ones(MOTION_DIM))

    def fit_motion_statistics(self, motion: torch.Tensor) -> None:
        self.motion_mean.copy_(motion.mean(0))
        self.motion_std.copy_(motion.std(0).clamp_min(1e-3))

    def inputs(self, features: torch.Tensor, motion: torch.Tensor) -> torch.Tensor:
        return torch.cat([features, (motion - self.motion_mean) / self.motion_std], dim=-1)

    def changes(self, x: torch.Tensor) -> torch.Tensor:  # (Q, d + 12) -> (Q, H, K)
        return torch.stack([head(x) for head in self.heads], dim=1)

    def forward(self, features: torch.Tensor, motion: torch.Tensor) -> torch.Tensor:  # -> (Q, K) the chosen change
        x = self.inputs(features, motion)
        changes = self.changes(x)
        if self.selector is None:
            return changes[:, 0]
        return changes[torch.arange(len(x)), self.selector(x).argmax(dim=1)]

    def last_layers(self) -> list[torch.Tensor]:
        return [head.last_layer.weight for head in self.heads]


def train_probe(probe: MotionProbe, data: ProbeSet, student_temp: float, steps: int, lr: float = 3e-4,
                batch_size: int = 256, seed: int = 0) -> list[float]:
    """AdamW on the training queries; returns the loss of every step."""
    probe.fit_motion_statistics(data.motion)
    probe.train()
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=0.05)
    losses = []
    for _ in range(steps):
        idx = torch.randint(len(data.copy), (min(batch_size, len(data.copy)),), generator=gen)
        x = probe.inputs(data.features[idx], data.motion[idx])
        per_hypothesis = cross_entropy(data.target_probs[idx, None], data.copy[idx, None] + probe.changes(x),
                                       student_temp)  # (b, H)
        best = per_hypothesis.argmin(dim=1)
        loss = per_hypothesis.gather(1, best[:, None]).mean()
        if probe.selector is not None:
            loss = loss + F.cross_entropy(probe.selector(x), best)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    probe.eval()
    return losses


@torch.no_grad()
def evaluate_probe(probe: MotionProbe, data: ProbeSet, space: LogitSpace, center: torch.Tensor,
                   student_temp: float) -> dict:
    """L_pred (nats) and retrieval Top-1 / mAP (%) of copy, probe, probe with another clip's camera motion (the
    motion of query (i + Q/2) mod Q) and the oracle, with the probe's paired differences."""
    kept, index_of = deduplicate(data.target)
    gallery = space.gallery(data.target_logits[kept], center)
    targets = torch.tensor([index_of[k] for k in data.target])
    excluded = torch.tensor([index_of.get(k, -1) for k in data.current])
    queries = {"copy": data.copy,
               "probe": data.copy + probe(data.features, data.motion),
               "probe_shuffled_motion": data.copy + probe(data.features, data.motion.roll(len(data.motion) // 2, 0)),
               "oracle": space.minimiser(data.target_logits, center)}
    ranks = {k: retrieval_ranks(space.query(q), gallery, targets, excluded) for k, q in queries.items()}
    rows = {k: dict(rank_statistics(ranks[k]), l_pred=float(cross_entropy(data.target_probs, q, student_temp).mean()))
            for k, q in queries.items()}
    return {"rows": rows, "num_gallery": len(kept),
            "probe_minus_copy": paired_difference(ranks["probe"], ranks["copy"]),
            "probe_minus_shuffled_motion": paired_difference(ranks["probe"], ranks["probe_shuffled_motion"])}
