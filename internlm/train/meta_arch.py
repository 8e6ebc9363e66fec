"""The meta-architecture: student and EMA teacher, their losses and how they are weighted, the DINO centers, the
teacher update and the per-step bookkeeping (sums over accumulation chunks and ranks, decoded into the logged
scalars). The trainer only sees ``begin_step`` / ``chunk_loss`` / ``end_step``.

Parallel wrappers (DDP, FSDP2) are applied to ``student``/``teacher`` from outside (internlm/parallel); this class
only calls their ``forward``, so it works the same wrapped or not. What it starts from (another run's weights, the
training clips' pose statistics) is read by the run's setup and handed in (``init_from``, ``set_pose_statistics``).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from internlm.config.schema import TrainConfig
from internlm.model import EgoAgent
from internlm.model.egoagent import JOINT_ONLY_PREFIXES
from internlm.parallel.data_parallel import all_reduce_, dist_world_size, local_parameters, unwrap

from .losses import DINOLoss, PredictionLoss, action_loss, visible_elements
from .prediction_base import CALIBRATION_SCALES, ResidualPrediction

logger = logging.getLogger(__name__)

AUTOCAST_DTYPES = {"torch.float16": torch.float16, "torch.half": torch.float16, "torch.bfloat16": torch.bfloat16}
# Order of the per-step statistics vector (summed over chunks and ranks, then divided by the world size).
STAT_NAMES = ("loss_rep", "loss_pred", "loss_act_sum", "teacher_entropy", "kl_teacher_student", "feature_std")


@dataclass
class StepState:
    """What one optimizer step accumulates over its gradient-accumulation chunks (this rank)."""

    act_normalizer: Optional[torch.Tensor]  # () global visible pose elements / world size (stage 2)
    stats: torch.Tensor  # (len(STAT_NAMES),) fp32: chunk-share-weighted means; loss_act_sum is a sum
    rep_sum: Optional[torch.Tensor] = None  # (K,) sum of the teacher's global-view logits
    rep_count: int = 0
    pred_sum: Optional[torch.Tensor] = None  # (K,) sum of the teacher's target-frame logits (stage 2)
    pred_count: int = 0


@dataclass
class StepSums:
    """A step's sums over all ranks (EgoAgentMetaArch.reduce_step), on the device."""

    rep_sum: Optional[torch.Tensor]  # (K,) teacher logits of the global views (None: evaluation)
    rep_count: Optional[torch.Tensor]  # (1,) their number
    pred_sum: Optional[torch.Tensor]  # (K,) teacher logits of the target frames (stage 2)
    pred_count: Optional[torch.Tensor]
    values: torch.Tensor  # (len(STAT_NAMES) + 1 + extras,) the statistics, the visible pose elements, the extras

    @property
    def extras(self) -> torch.Tensor:
        return self.values[len(STAT_NAMES) + 1:]


def _add(total: Optional[torch.Tensor], part: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return part if total is None else total + part


class EgoAgentMetaArch(nn.Module):
    def __init__(self, cfg: TrainConfig):
        super().__init__()
        self.cfg = cfg
        self.joint = cfg.loss.is_joint
        self.student = EgoAgent(cfg.model, joint=self.joint)
        # The teacher is built from its own section (attention backend, no activation checkpointing) and starts as
        # the student's copy; building it must not move the random stream the rest of the run draws from.
        with torch.random.fork_rng(devices=[]):
            self.teacher = EgoAgent(cfg.teacher_model, joint=self.joint)
        self.teacher.load_state_dict(self.student.state_dict())
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        # the state prediction's base and the calibrated share of the learned change (model.prediction_residual)
        self.prediction = ResidualPrediction(cfg.model)
        K = cfg.model.output_dim
        lc = cfg.loss
        # the losses own their centres (EMAs of the teacher's logits, updated in end_step)
        self.rep_loss = DINOLoss(K, lc.student_temp, lc.center_momentum)
        self.pred_loss = PredictionLoss(K, lc.student_temp, lc.center_momentum)
        self.loss_weights = {"loss_rep": lc.rep_weight}
        if self.joint:
            self.loss_weights.update(loss_pred=lc.pred_weight, loss_act=lc.act_weight)
        self.student_dtype = AUTOCAST_DTYPES.get(cfg.model.dtype)  # None: no autocast
        self.teacher_dtype = AUTOCAST_DTYPES.get(cfg.teacher_model.dtype)

    @property
    def loss_terms(self) -> tuple[str, ...]:
        """The loss terms this stage trains and logs, in order."""
        return tuple(self.loss_weights)

    def weighted_total(self, terms: dict) -> torch.Tensor | float:
        """L = w_rep L_rep + w_pred L_pred + w_act L_act (paper eq. 4): what is trained and what is logged."""
        return sum(self.loss_weights[name] * value for name, value in terms.items())

    # ---------------------------------------------------------------------------------- initialisation

    def init_from(self, folder: str, student_state: dict[str, torch.Tensor], teacher_state: dict[str, torch.Tensor],
                  centers: Optional[dict[str, torch.Tensor]]) -> None:
        """Student and teacher weights and the representation centre of another run (stage 2 from stage 1), as
        internlm.checkpoint.weights.read_init_source read them from its step ``folder``; the joint-only parts start
        from their initialisation. ``centers``: None for a weights-only checkpoint."""
        for which, model, state in (("model", self.student, student_state), ("teacher", self.teacher, teacher_state)):
            result = model.load_state_dict(state, strict=False)
            bad_missing = [k for k in result.missing_keys if not k.startswith(JOINT_ONLY_PREFIXES)]
            if bad_missing or result.unexpected_keys:
                raise ValueError(f"ckpt.load_ckpt_info: {folder} ({which}) does not fit this model: missing "
                                 f"{bad_missing[:5]}, unexpected {result.unexpected_keys[:5]}")
            if result.missing_keys:
                logger.info("initialised %s from %s; %d new tensors start fresh (%s ...)", which, folder,
                            len(result.missing_keys), ", ".join(sorted({k.split('.')[0] for k in result.missing_keys})))
            else:
                logger.info("initialised %s from %s", which, folder)
            if self.cfg.model.prediction_init == "representation" and any(k.startswith("pred_head.")
                                                                             for k in result.missing_keys):
                model.init_prediction_from_representation()
                logger.info("%s: the state-prediction head and future-state query start as copies of the "
                            "representation head and the state query (model.prediction_init)", which)
        if centers is not None:
            self.rep_center.copy_(centers["rep_center"])
            logger.info("representation centre from %s (|c| = %.3g)", folder, float(self.rep_center.norm()))
        else:
            logger.info("%s holds weights only: the representation centre starts at 0", folder)

    # ------------------------------------------------------------------------------------------ a step

    def _autocast(self, dtype: Optional[torch.dtype], device: torch.device):
        return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)

    def begin_step(self, batch: dict) -> StepState:
        """Before the chunks of one optimizer step on this rank's ``batch``."""
        device = batch["global_crops"].device
        act_normalizer = None
        if self.joint:  # the global number of visible pose elements, so that L_act is the global-batch mean
            visible = all_reduce_(visible_elements(batch["poses"]).float().reshape(1))
            act_normalizer = visible[0] / dist_world_size()
        return StepState(act_normalizer, torch.zeros(len(STAT_NAMES), device=device))

    def chunk_loss(self, chunk: dict, state: StepState, teacher_temp: float, chunk_weight: float) -> torch.Tensor:
        """Forward teacher and student on one gradient-accumulation chunk; returns the loss to backpropagate and
        adds the chunk's statistics and centre sums to ``state``.

        chunk: global_crops (B, 2, 3, G, G), local_crops (B, n, 3, L, L) and, in stage 2, frames (B, T, 3, P, P),
        poses (B, T, 4, 5, 17) and with data.clip_color_change student_frames (B, T, 3, P, P), the frames the
        student sees (the teacher sees ``frames``). chunk_weight = B / per-rank batch, so the chunks of a step add up
        to the mean.
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

        with torch.no_grad(), self._autocast(self.teacher_dtype, globals_.device):
            t_out = self.teacher(views=[g_views] + (self._teacher_frame_views(chunk) if self.joint else []))
        t_global = t_out.views[0].logits.float()  # (2B, K)
        t_frames = base = None
        if self.joint:  # (B, T, K) each
            t_frames, base = self._frame_targets(t_out.views[1:], frames, teacher_temp)
        with self._autocast(self.student_dtype, globals_.device):
            s_out = self.student(views=student_views, frames=chunk.get("student_frames", frames), poses=poses,
                                 rollout_passes=lc.act_rollout_passes if self.joint else 0)

        s_logits = list(s_out.views[0].logits.chunk(n_global))
        if n_local:
            s_logits += list(s_out.views[1].logits.chunk(n_local))
        loss_rep = self.rep_loss(s_logits, list(t_global.chunk(n_global)), teacher_temp)
        terms = {"loss_rep": loss_rep * chunk_weight}
        zero = loss_rep.new_zeros(())
        loss_pred, act_sum = zero, zero
        if self.joint:
            predicted = self.prediction.predict(s_out.joint.future_logits, base)  # (B, T, K)
            loss_pred = self.pred_loss(predicted, t_frames, teacher_temp)
            passes = [s_out.joint.actions] + s_out.rollout_actions  # teacher-forced, then rolled out
            loss_act = sum(action_loss(a, poses, state.act_normalizer) for a in passes) / len(passes)
            act_sum = loss_act.detach() * state.act_normalizer
            terms.update(loss_pred=loss_pred * chunk_weight, loss_act=loss_act)
            targets = t_frames[:, 1:].reshape(-1, t_frames.shape[-1])
            state.pred_sum, state.pred_count = _add(state.pred_sum, targets.sum(0)), state.pred_count + len(targets)
        state.rep_sum, state.rep_count = _add(state.rep_sum, t_global.sum(0)), state.rep_count + len(t_global)

        with torch.no_grad():
            q = self.rep_loss.teacher_probs(t_global[:B], teacher_temp)  # teacher view 0
            entropy = -(q * torch.log(q.clamp_min(1e-12))).sum(-1).mean()
            log_s = F.log_softmax(s_logits[0].float() / lc.student_temp, dim=-1)  # student on the same view
            kl = (q * (torch.log(q.clamp_min(1e-12)) - log_s)).sum(-1).mean()
            feats = F.normalize(s_out.views[0].feature[:B].float(), dim=-1)
            feat_std = feats.std(dim=0).mean() if B > 1 else zero
            # act_sum is a sum (normalised once per step); the others are means, weighted by the chunk's share
            # (python-number weights: a tensor made from a list would be a host-to-device copy, a sync per chunk)
            stats = torch.stack([loss_rep.detach() * chunk_weight, loss_pred.detach() * chunk_weight, act_sum,
                                 entropy * chunk_weight, kl * chunk_weight, feat_std * chunk_weight]).float()
            state.stats += stats
        return self.weighted_total(terms)

    def _teacher_frame_views(self, chunk: dict) -> list[torch.Tensor]:
        """Stage 2's teacher inputs besides the global crops: the clip's frames (B*T, 3, P, P) and, where the
        prediction's base is made of other images (ResidualPrediction.base_images), those."""
        frames = chunk["frames"]
        views = [frames.flatten(0, 1)]
        base_images = self.prediction.base_images(frames, chunk.get("camera_motion"), chunk.get("focal"))
        if base_images is not None:
            views.append(base_images.flatten(0, 1))
        return views

    def _frame_targets(self, views, frames: torch.Tensor,
                       teacher_temp: float) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The teacher's outputs on _teacher_frame_views -> its logits of every frame (B, T, K) and, with
        model.prediction_residual, the base the state prediction adds its change to (B, T, K), else None."""
        t_frames = views[0].logits.float().view(*frames.shape[:2], -1)
        base_logits = views[1].logits.float().view_as(t_frames) if len(views) > 1 else t_frames
        return t_frames, self.prediction.base(base_logits, self.pred_center, teacher_temp, self.cfg.loss.student_temp)

    def prediction_parts(self, batches: Iterable[dict],
                         teacher_temp: float) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per batch of clips (on the device): the teacher's logits of every frame, the prediction's base and the
        student's learned change, each (B, T, K) (what ResidualPrediction.calibrate weighs)."""
        for chunk in batches:
            frames = chunk["frames"]
            with torch.no_grad():
                with self._autocast(self.teacher_dtype, frames.device):
                    t_out = self.teacher(views=self._teacher_frame_views(chunk))
                t_frames, base = self._frame_targets(t_out.views, frames, teacher_temp)
                with self._autocast(self.student_dtype, frames.device):
                    change = self.student(frames=frames, poses=chunk["poses"]).joint.future_logits
            yield t_frames, base, change

    def calibrate_prediction_change(self, batches: Iterable[dict], teacher_temp: float,
                                    scales: Sequence[float] = CALIBRATION_SCALES) -> dict:
        """data.calibration_takes: the share of the learned change the state prediction keeps, chosen on ``batches``
        (clips of takes the run did not train on, on the device) by ResidualPrediction.calibrate, which it sets.
        Collective: every rank passes as many batches."""
        return self.prediction.calibrate(self.prediction_parts(batches, teacher_temp), self.pred_center, teacher_temp,
                                         self.cfg.loss.student_temp, scales)

    def meta_state(self) -> dict:
        """What a checkpoint's meta.json keeps of this module besides the weights and centres."""
        return self.prediction.meta_state()

    def load_meta_state(self, meta: dict) -> None:
        self.prediction.load_meta_state(meta)

    def cancel_last_layer_gradients(self, step: int) -> None:
        """DINO's freeze_last_layer: the heads' prototype layers are not updated for the first
        loss.freeze_last_layer_steps steps (a gradient of None: AdamW leaves the parameter as it is)."""
        if step >= self.cfg.loss.freeze_last_layer_steps:
            return
        for name, p in self.student.named_parameters():
            if ".last_layer." in name:
                p.grad = None

    def reduce_step(self, state: StepState, extras: Sequence[torch.Tensor] = ()) -> "StepSums":
        """The step's sums over all ranks in one all-reduce, on the device (no host sync): the teacher logits for the
        centres, the sample counts, the logged statistics, the visible pose elements, and ``extras`` (the trainer's
        one-element flags and counts)."""
        device = state.stats.device
        centre_parts = []  # (logit sum, count) of the representation and the prediction targets, where present
        for total, count in ((state.rep_sum, state.rep_count), (state.pred_sum, state.pred_count)):
            if total is not None:
                centre_parts += [total, torch.full((1,), float(count), device=device)]
        normalizer = state.act_normalizer if state.act_normalizer is not None else torch.zeros((), device=device)
        parts = centre_parts + [state.stats, normalizer.reshape(1).float()] + [e.reshape(1).float() for e in extras]
        flat = all_reduce_(torch.cat([p.float().reshape(-1) for p in parts]))
        pieces = list(flat.split([p.numel() for p in parts]))
        centres = pieces[:len(centre_parts)] + [None] * (4 - len(centre_parts))
        return StepSums(*centres, torch.cat(pieces[len(centre_parts):]))

    def end_step(self, state: StepState, momentum: float, update: bool, sums: Optional["StepSums"] = None,
                 read: Optional[list[float]] = None) -> dict[str, float]:
        """After the optimizer step: the EMA teacher and the centres (when the step was applied), and the step's
        statistics over all ranks as named scalars. ``sums`` and ``read`` (its values on the host): what the trainer
        already reduced and read with the gradient norm, in the step's one sync; by default reduced and read here."""
        if sums is None:
            sums = self.reduce_step(state)
        if read is None:
            read = sums.values.tolist()
        if update:
            self.update_teacher(momentum)
            self.update_centers(sums.rep_sum, sums.rep_count, sums.pred_sum, sums.pred_count)
        return self.decode_stats(read, prefix="")

    def decode_stats(self, read: list[float], prefix: str) -> dict[str, float]:
        """StepSums.values on the host (statistics and visible pose elements, summed over ranks) -> loss terms,
        weighted total and the collapse monitors."""
        world = dist_world_size()
        named = {name: value / world for name, value in zip(STAT_NAMES, read)}
        terms = {"loss_rep": named["loss_rep"]}
        if self.joint:
            normalizer = read[len(STAT_NAMES)]  # visible elements over all ranks (each rank held global / world)
            terms.update(loss_pred=named["loss_pred"], loss_act=named["loss_act_sum"] * world / max(normalizer, 1.0))
        out = dict(terms, loss=self.weighted_total(terms))
        out.update({k: named[k] for k in ("teacher_entropy", "kl_teacher_student", "feature_std")})
        return {prefix + k: v for k, v in out.items()}

    @torch.no_grad()
    def evaluate(self, batches: Iterable[dict], teacher_temp: float) -> dict[str, float]:
        """The losses and monitors on validation batches (already on the device): no gradient, no centre or teacher
        update; means over samples (L_act over visible elements). Collective: every rank passes as many batches."""
        total: Optional[StepState] = None
        samples = 0
        for batch in batches:
            one = self.begin_step(batch)
            self.chunk_loss(batch, one, teacher_temp, 1.0)
            n = batch["global_crops"].shape[0]
            weights = torch.full_like(one.stats, float(n))
            weights[STAT_NAMES.index("loss_act_sum")] = 1.0  # already a sum
            if total is None:
                total = StepState(one.act_normalizer, one.stats * weights)
            else:
                total.stats += one.stats * weights
                if self.joint:
                    total.act_normalizer = total.act_normalizer + one.act_normalizer
            samples += n
        if total is None:
            raise ValueError("no validation batch")
        divisor = torch.full_like(total.stats, float(samples))
        divisor[STAT_NAMES.index("loss_act_sum")] = 1.0
        total.stats /= divisor
        return self.decode_stats(self.reduce_step(total).values.tolist(), prefix="val_")

    def unwrapped_models(self) -> tuple[EgoAgent, EgoAgent]:
        """Student and teacher without their data-parallel wrapper: where buffers set outside training live."""
        return unwrap(self.student), unwrap(self.teacher)

    @torch.no_grad()
    def set_pose_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """The action projector's input statistics (model.pose_normalization), for student and teacher alike
        (buffers are not part of the EMA)."""
        for model in self.unwrapped_models():
            model.action_projector.set_pose_statistics(mean, std)

    # ---------------------------------------------------------------------------------- teacher and centers

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """p_t = m p_t + (1 - m) p_s for every parameter (each rank its own shards when they are sharded)."""
        teacher, student = local_parameters(self.teacher), local_parameters(self.student)
        torch._foreach_lerp_(teacher, student, 1.0 - momentum)  # one pass over both (mul_ then add_ took two)

    def update_centers(self, rep_sum: torch.Tensor, rep_count, pred_sum: Optional[torch.Tensor], pred_count) -> None:
        """Each loss's centre from the teacher logits of the step: sums and counts over all ranks (reduce_step's),
        counts as numbers or device tensors."""
        self.rep_loss.update_center(rep_sum, rep_count)
        if pred_sum is not None:
            self.pred_loss.update_center(pred_sum, pred_count)

    @property
    def rep_center(self) -> torch.Tensor:
        """(K,) L_rep's centre (the loss module's buffer itself)."""
        return self.rep_loss.center

    @property
    def pred_center(self) -> torch.Tensor:
        """(K,) L_pred's centre (the loss module's buffer itself)."""
        return self.pred_loss.center

    def center_tensors(self) -> dict[str, torch.Tensor]:
        """The centres as the training state saves them (their names there)."""
        return {"rep_center": self.rep_center, "pred_center": self.pred_center}
