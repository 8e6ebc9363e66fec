"""Future-state retrieval: ranks of the true next frame among a gallery of frames, and the similarity it uses.

Each query has one correct gallery entry (``targets``) and optionally one entry removed from its gallery
(``excluded``: the query's own current frame). rank = 1 + the number of other (non-excluded) entries at least
as similar as the correct one: ties count against the query, so a collapsed model (all similarities equal)
ranks last instead of first. Top-1 = % of queries with rank 1; with one correct entry per query, AP = 1 / rank
and mAP is its mean (%). Ranks stream over query and gallery chunks: memory is one (query chunk x gallery chunk)
similarity block.

Similarity (``LogitSpace``): L_pred is the cross-entropy H(softmax((l_T - c) / tau_t), softmax(s / tau_s))
between the teacher's logits l_T of the next frame (centre c) and the student's prediction s. It is minimal
exactly when log softmax(s / tau_s) equals log softmax((l_T - c) / tau_t), i.e. for s = (tau_s / tau_t)(l_T - c)
+ any per-row constant. The loss is blind to that constant, so a similarity must be too: we compare the centred
log-probability vectors (each minus its own mean over the K prototypes, which removes any per-row constant) by
cosine, the query side from s, the gallery side from (l_T - c). The minimiser of the loss then has cosine 1 with
its target (the oracle ranks first), adding a constant to a query changes nothing, and temperatures drop out (a
cosine ignores scale: the metric asks which frame a prediction points to, not how confident it is). The
loss-exact alternative, ranking by KL(p_g || q), L_pred's excess had g been the next frame, was measured too: it
ranks the same predictors in the same order on the demo, but near-duplicate frames under a sharp teacher differ
by less than float32 resolves, so its own oracle fails the self-test; the cosine has no such blind spot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Hashable, Optional, Sequence

import torch

from internlm.checkpoint.weights import load_model, read_centers, read_change_scale
from internlm.model.reprojection import reproject_steps
from internlm.train.losses import prediction_minimiser
from internlm.train.prediction_base import ResidualPrediction


def retrieval_ranks(queries: torch.Tensor, gallery: torch.Tensor, targets: torch.Tensor, excluded: torch.Tensor,
                    queries_per_chunk: int = 1024, gallery_per_chunk: int = 8192) -> torch.Tensor:
    """queries (Q, D), gallery (G, D) (dot product = similarity), targets (Q,) in [0, G), excluded (Q,) in
    [-1, G) (-1: nothing removed) -> ranks (Q,) int64, 1 = the correct entry is the most similar."""
    Q, G = queries.shape[0], gallery.shape[0]
    if targets.shape != (Q,) or excluded.shape != (Q,):
        raise ValueError(f"targets {tuple(targets.shape)} and excluded {tuple(excluded.shape)} must be ({Q},)")
    if Q and (int(targets.min()) < 0 or int(targets.max()) >= G):
        raise ValueError(f"targets must index the gallery of {G} entries")
    if bool((targets == excluded).any()):
        raise ValueError("a query's correct entry is also its excluded entry")
    device = gallery.device
    targets, excluded = targets.to(device), excluded.to(device)
    ranks = torch.empty(Q, dtype=torch.int64, device=device)
    for q0 in range(0, Q, queries_per_chunk):
        q = queries[q0:q0 + queries_per_chunk].to(device)  # (q, D)
        tgt, exc = targets[q0:q0 + queries_per_chunk], excluded[q0:q0 + queries_per_chunk]
        target_sim = (q * gallery[tgt]).sum(dim=1)  # (q,)
        ahead = torch.zeros(q.shape[0], dtype=torch.int64, device=device)
        for g0 in range(0, G, gallery_per_chunk):
            sims = q @ gallery[g0:g0 + gallery_per_chunk].T  # (q, g)
            idx = torch.arange(g0, g0 + sims.shape[1], device=device)  # (g,)
            counted = (sims >= target_sim[:, None]) & (idx[None] != tgt[:, None]) & (idx[None] != exc[:, None])
            ahead += counted.sum(dim=1)
        ranks[q0:q0 + q.shape[0]] = ahead + 1
    return ranks


def top_retrieved(queries: torch.Tensor, gallery: torch.Tensor, excluded: torch.Tensor, k: int = 5) -> torch.Tensor:
    """The k most similar gallery entries of a few queries (for the example PNG): (Q, D), (G, D), (Q,) -> (Q, k)."""
    sims = queries.to(gallery.device) @ gallery.T  # (Q, G)
    rows = torch.nonzero(excluded >= 0).flatten()
    sims[rows, excluded[rows].to(sims.device)] = float("-inf")
    return sims.topk(min(k, gallery.shape[0] - 1 if len(rows) else gallery.shape[0]), dim=1).indices


def deduplicate(keys: Sequence[Hashable]) -> tuple[list[int], dict]:
    """Keep the first occurrence of each key: -> (positions of the kept entries, {key: gallery index})."""
    kept, index_of = [], {}
    for pos, key in enumerate(keys):
        if key not in index_of:
            index_of[key] = len(kept)
            kept.append(pos)
    return kept, index_of


def step_keys(batch: dict) -> tuple[list, list]:
    """The (take_uid, frame) of frame t and of frame t+1 of every query (clip step t = 0..T-2) of an eval batch of
    clips, clip-major: the keys a gallery is deduplicated and a query's target and excluded entry found by."""
    current, target = [], []
    for take, ids in zip(batch["take_uid"], batch["frame_ids"].tolist()):
        current += [(take, f) for f in ids[:-1]]
        target += [(take, f) for f in ids[1:]]
    return current, target


class LogitSpace:
    """Exact low-dimensional embeddings of predictions and gallery frames whose dot products are the protocol's
    similarity: the cosine of the centred log-probabilities, centred(s) for a prediction s and centred(l_g - c)
    for a gallery frame's teacher logits l_g and the teacher's centre c (centred(v) = v minus its mean over the K
    prototypes). It is blind to a constant added to a query (L_pred is), and the minimiser of L_pred towards
    frame g, s = (tau_s / tau_t)(l_g - c) + any constant, has cosine 1 with g.

    Every logit vector here is a DINO head's output (a bias-free linear layer W: (K, r), r = 256 << K = 65536 in
    the paper configs) or (tau_s / tau_t)(l - c); with an orthonormal basis B of span(W_1, ..., W_n, c_1, ...,
    c_m, 1) they all lie in the span, centred or not, so <x, y> = <B^T x, B^T y>: rows of n r + m + 1 floats
    instead of K (31k frames x 65536 x 4 bytes = 8 GB at full scale), and dot products equal the K-dim cosines.
    """

    def __init__(self, last_layers: Sequence[torch.Tensor], centers: Sequence[torch.Tensor] = (),
                 student_temp: float = 0.1, teacher_temp: float = 0.04):
        K = last_layers[0].shape[0]
        cols = [w.detach().double().cpu() for w in last_layers]  # (K, r_i)
        cols += [c.detach().double().cpu().reshape(K, 1) for c in centers]
        cols.append(torch.ones(K, 1, dtype=torch.float64))
        basis, _ = torch.linalg.qr(torch.cat(cols, dim=1))  # (K, m), orthonormal columns spanning the above
        self.basis = basis.to(device=last_layers[0].device, dtype=torch.float32)
        self.student_temp, self.teacher_temp = student_temp, teacher_temp

    def minimiser(self, logits: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
        """(n, K) teacher logits -> the student logits s = (tau_s / tau_t)(l - c) that minimise L_pred towards
        them (what a perfect predictor outputs: the oracle's query; on frame t, the copy baseline's)."""
        return prediction_minimiser(logits, center, self.teacher_temp, self.student_temp)

    def query(self, logits: torch.Tensor) -> torch.Tensor:
        """(n, K) student logits s -> (n, m) unit rows."""
        return self._embed(logits.float())

    def gallery(self, logits: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
        """(n, K) teacher logits of gallery frames and the teacher's centre -> (n, m) unit rows."""
        return self._embed(logits.float() - center.to(logits.device).float())

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        x = x - x.mean(dim=1, keepdim=True)  # a per-row constant is what L_pred cannot see
        coords = x @ self.basis.to(x.device)  # (n, m)
        norms = x.norm(dim=1, keepdim=True).clamp_min(1e-12)
        lost = (1.0 - coords.norm(dim=1, keepdim=True) / norms).abs().max() if len(x) else 0.0
        if float(lost) > 1e-3:  # a head with a bias (or a stray centre) would break the identity
            raise RuntimeError(f"logits leave the span of the heads' last layers and centres (relative norm "
                               f"lost {float(lost):.2e}): the head is not a bias-free linear map")
        return coords / norms


def chance_level(gallery_size: int, excluded: bool = True) -> dict:
    """Expected Top-1 / mAP (%) of a query that ranks the gallery at random: rank uniform on 1..G', G' the
    entries it competes with (the gallery minus the excluded current frame)."""
    g = max(gallery_size - (1 if excluded else 0), 1)
    return {"top1": 100.0 / g, "mAP": 100.0 * sum(1.0 / r for r in range(1, g + 1)) / g}


def rank_statistics(ranks: torch.Tensor) -> dict:
    """(Q,) ranks -> Top-1 and mAP (%) with their standard errors (of the mean over queries)."""
    r = ranks.double().cpu()
    n = r.numel()
    hits, inv = (r == 1).double(), 1.0 / r
    se = (lambda v: 100.0 * float(v.std(unbiased=True)) / math.sqrt(n) if n > 1 else float("nan"))  # noqa: E731
    return {"top1": 100.0 * float(hits.mean()) if n else float("nan"),
            "mAP": 100.0 * float(inv.mean()) if n else float("nan"),
            "top1_se": se(hits), "mAP_se": se(inv), "num_queries": n}


def paired_difference(ranks_a: torch.Tensor, ranks_b: torch.Tensor) -> dict:
    """a minus b on the same queries: the Top-1 and mAP differences (points) and the standard errors of the paired
    differences (the queries are shared, so this is much tighter than two independent errors)."""
    a, b = ranks_a.double().cpu(), ranks_b.double().cpu()
    n = a.numel()
    d_hit, d_inv = (a == 1).double() - (b == 1).double(), 1.0 / a - 1.0 / b
    se = (lambda v: 100.0 * float(v.std(unbiased=True)) / math.sqrt(n) if n > 1 else float("nan"))  # noqa: E731
    return {"top1_diff": 100.0 * float(d_hit.mean()), "top1_diff_se": se(d_hit),
            "mAP_diff": 100.0 * float(d_inv.mean()), "mAP_diff_se": se(d_inv), "num_queries": n}


@dataclass
class Checkpoint:
    """One checkpoint's networks for the retrieval protocol: the student (query side) and the gallery network."""

    folder: str
    student: torch.nn.Module
    gallery_net: torch.nn.Module
    center: torch.Tensor  # (K,) the centre the checkpoint's loss applies to the gallery network's logits
    center_source: str
    space: LogitSpace
    # model.prediction_residual (stage 2): the prediction's base and calibrated change scale (train/prediction_base.py)
    # and the network whose view of frame t the base is made of (the teacher, as in training); None otherwise
    prediction: Optional[ResidualPrediction] = None
    base_net: Optional[torch.nn.Module] = None

    def predict(self, frames: torch.Tensor, poses: torch.Tensor, gallery_logits: torch.Tensor,
                camera_motion: Optional[torch.Tensor] = None, focal: Optional[torch.Tensor] = None,
                reprojected_logits: Optional[torch.Tensor] = None, base: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The student's state prediction of every step (B, T, K), built as in training. camera_motion (B, T, 12)
        and focal (B,): the clip's (data.camera_motion), needed with model.prediction_reprojection. gallery_logits
        and reprojected_logits: see prediction_base; base: its result, when the caller has it already."""
        head = self.student.forward_joint(frames, poses).future_logits
        if self.prediction is None:
            return head
        if base is None:
            base = self.prediction_base(frames, gallery_logits, camera_motion, focal, reprojected_logits)
        return self.prediction.predict(head, base)

    def prediction_base(self, frames: torch.Tensor, gallery_logits: torch.Tensor,
                        camera_motion: Optional[torch.Tensor] = None, focal: Optional[torch.Tensor] = None,
                        reprojected_logits: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, T, K) the residual prediction's base (ResidualPrediction.base with the checkpoint's L_pred centre).
        When the gallery network is the teacher, its logits of the frames (gallery_logits) and, when the caller has
        them, of the reprojected frames (reprojected_logits, same camera motion) are reused."""
        reuse = self.base_net is self.gallery_net
        if reuse and self.prediction.reprojection and reprojected_logits is not None:
            logits = reprojected_logits
        else:
            images = self.prediction.base_images(frames, camera_motion, focal)
            if images is None:
                logits = gallery_logits if reuse else self._represent(self.base_net, frames)
            else:
                logits = self._represent(self.base_net, images)
        return self.prediction.base(logits, self.center, self.space.teacher_temp, self.space.student_temp)

    def reprojected_logits(self, frames: torch.Tensor, camera_motion: torch.Tensor,
                           focal: torch.Tensor) -> torch.Tensor:
        """(B, T, K) the gallery network's logits of every step's image reprojected by the step's camera rotation:
        space.minimiser of them is the reprojection baseline (a geometric forward model of the action, nothing
        learned), and with model.prediction_reprojection the residual base."""
        return self._represent(self.gallery_net, reproject_steps(frames, camera_motion, focal))

    @staticmethod
    def _represent(net: torch.nn.Module, frames: torch.Tensor) -> torch.Tensor:  # (B, T, 3, P, P) -> (B, T, K)
        return net.represent(frames.flatten(0, 1)).logits.unflatten(0, frames.shape[:2])


def load_checkpoint(path: str, gallery: str, device, attn_backend: str) -> Checkpoint:
    student, cfg, folder = load_model(path, "model", device, attn_backend=attn_backend)
    residual = student.joint and cfg.model.prediction_residual
    teacher = load_model(folder, "teacher", device, attn_backend)[0] if gallery == "teacher" or residual else None
    gallery_net = student if gallery == "student" else teacher
    centers = read_centers(folder, cfg.model.output_dim)
    # The centre L_pred applies to the target frames (stage 2); a stage-1 checkpoint's representation centre.
    which = "pred_center" if student.joint else "rep_center"
    if centers is None:
        center, source = torch.zeros(cfg.model.output_dim), "none (weights-only checkpoint: zero centre)"
    else:
        center, source = centers[which], which
    heads = [gallery_net.rep_head.last_layer.weight] + ([student.pred_head.last_layer.weight] if student.joint else [])
    if residual and gallery_net is not teacher:  # the residual base is in the teacher head's span
        heads.append(teacher.rep_head.last_layer.weight)
    space = LogitSpace(heads, [center], cfg.loss.student_temp, cfg.loss.teacher_temp)
    prediction = ResidualPrediction(cfg.model, read_change_scale(folder)) if residual else None
    return Checkpoint(folder, student, gallery_net, center.to(device), source, space, prediction,
                      teacher if residual else None)


def other_clips(sample_ids, n: int) -> list[int]:
    """The controls' deterministic pairing: clip i -> clip (i + N/2) mod N of the split (far away in it, usually
    another take). The retrieval's shuffled actions and the motion evaluation's other images use it."""
    return [(int(i) + n // 2) % n for i in sample_ids]


def other_clip_actions(dataset, sample_ids: list[int]) -> dict:
    """The shuffled-action control: the actions of clip (i + N/2) mod N for every clip i (other_clips): its poses
    (B, T, 4, 5, 17) and, when the clips carry it, its camera motion (B, T, 12)."""
    others = other_clips(sample_ids, len(dataset))
    out = {"poses": torch.stack([dataset.clip_poses(j) for j in others])}
    if getattr(dataset, "camera_motion", False):
        out["camera_motion"] = torch.stack([torch.from_numpy(dataset.clip_camera_motion(j)) for j in others])
    return out
