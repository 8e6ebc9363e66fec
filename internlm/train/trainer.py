"""The training loop of both stages: data -> chunks -> losses -> one optimizer step -> teacher/centers -> logs ->
checkpoints. What a step computes and logs is the meta-architecture's (train/meta_arch.py): the loop knows no
model, loss or stage; ``loss.name`` (dinoimgcls | joint) decides those there."""

from __future__ import annotations

import json
import logging
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np
import torch
import torch.distributed as dist

from internlm.checkpoint.atomic import atomic_write_json, atomic_write_text
from internlm.checkpoint.layout import (
    CALIBRATION_FILE,
    MARKER,
    complete_steps,
    incomplete_steps,
    is_complete,
    latest_checkpoint,
    read_meta,
    resolve_checkpoint,
    step_folder,
)
from internlm.checkpoint.provenance import git_commit
from internlm.checkpoint.train_state import CheckpointManager, CorruptCheckpointError
from internlm.checkpoint.weights import read_init_source
from internlm.config import TrainConfig, to_dict
from internlm.data.bad_samples import parse_bad_files
from internlm.data.build import (
    build_clip_dataset,
    build_train_dataset,
    build_train_loader,
    build_valid_dataset,
    build_valid_loader,
    pose_statistics,
)
from internlm.data.workers import running_loader
from internlm.initialize.launch import DistContext
from internlm.initialize.preemption import PreemptionFlag, StopRequest, requeue_slurm_job
from internlm.model.egoagent import check_backend_can_train
from internlm.model.flops import sample_cost
from internlm.monitor.gpus import peak_tflops
from internlm.monitor.progress import StepTimer
from internlm.monitor.tensorboard import ScalarWriter
from internlm.parallel.compile import check_compile_available, compile_blocks, compile_enabled
from internlm.parallel.data_parallel import DataParallelPlan, unwrap
from internlm.solver.grad_scaler import DynamicLossScaler
from internlm.solver.optimizer import apply_schedule
from internlm.solver.schedules import Schedules

from .config_change import ConfigChangeError, changes_since, report, shape_mismatches
from .meta_arch import AUTOCAST_DTYPES, EgoAgentMetaArch

logger = logging.getLogger(__name__)


@dataclass
class Progress:
    step: int = 0  # optimizer updates applied (the schedules' clock)
    iteration: int = 0  # batches consumed, skipped steps included
    consumed_samples: int = 0  # global position in the sample stream
    skipped_steps: int = 0  # non-finite gradients (fp16 overflow)
    bad_samples: int = 0  # distinct unreadable input files met (their samples were replaced)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class RunawayTrainingError(RuntimeError):
    """Training cannot make progress any more (every update skipped); the message says why and what to change."""


def new_run_pose_statistics(cfg: TrainConfig) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
    """What a run that does not resume computes once before its first step: the training clips' pose statistics
    (mean, std) for model.pose_normalization (saved with the weights; an initialisation from a stage-2 run replaces
    them). None where nothing is normalised, or on generated data."""
    if cfg.loss.is_joint and cfg.model.pose_normalization and cfg.data.dataset_type != "Generated":
        return pose_statistics(cfg.data)
    return None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Trainer:
    def __init__(self, cfg: TrainConfig, ctx: DistContext, loader_factory=None):
        self.cfg = cfg
        self.ctx = ctx
        self.device = ctx.device
        self.world = ctx.world_size
        self.global_batch = cfg.data.micro_num * self.world
        if cfg.model.dtype == "torch.tf32" and self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.deterministic = cfg.cudnn_deterministic
        torch.backends.cudnn.benchmark = cfg.cudnn_benchmark
        if not cfg.ckpt.save_ckpt_folder:
            raise ValueError("ckpt.save_ckpt_folder is not set: the run needs a folder for logs and checkpoints")
        for section, trains in ((cfg.model, True), (cfg.teacher_model, False)):  # stop before building the model
            check_backend_can_train(section, cfg.loss.is_joint, self.device,
                                    AUTOCAST_DTYPES.get(section.dtype) or torch.float32, needs_grad=trains)

        self.plan = DataParallelPlan(cfg.parallel, self.world, self.device)
        self.manager = CheckpointManager(cfg, self.plan)
        resume_candidates = self._resume_candidates()

        seed_everything(cfg.data.seed)  # identical initial weights on every rank
        self.meta = EgoAgentMetaArch(cfg)
        init = cfg.ckpt.init_source()
        if not resume_candidates:
            statistics = new_run_pose_statistics(cfg)
            if statistics is not None:
                self.meta.set_pose_statistics(*statistics)
            if init is not None and "all" not in init.content:  # ckpt.load_ckpt_info content ("model",)
                source = read_init_source(init.path)  # e.g. stage 2 from stage 1
                self.meta.init_from(source.folder, source.student_state, source.teacher_state, source.centers)
        self.meta.to(self.device)

        if compile_enabled(cfg, self.device):

            check_compile_available(self.device)
            logger.info("torch.compile: %d transformer blocks (compiled at their first call)",
                        compile_blocks(self.meta, cfg))
        self.plan.apply(self.meta, cfg.hybrid_zero_optimizer.reduce_bucket_size)
        if self.plan.fusion is not None:
            logger.info("gradient accumulation fusion: %d block weights add their gradients into fp32 buffers "
                        "(%d buckets), cast once per step", len(self.plan.fusion.params), len(self.plan.fusion.buckets))
        self.optimizer = self.plan.build_optimizer(unwrap(self.meta.student), cfg.adam)
        self.scaler = DynamicLossScaler(cfg.grad_scaler, enabled=self.meta.student_dtype == torch.float16)
        self.schedules = Schedules.from_config(cfg)
        self.progress = Progress()
        self.consecutive_skips = 0  # skipped steps since the last applied update
        self.bad_files: dict[str, str] = {}  # path -> reason of each unreadable input file met, the same on all ranks
        self.config_changes: list[dict] = []  # the resumes with a changed config (ckpt/meta.json: config_changes)
        self._resume_changes: list[dict] = []  # this resume's, if the config changed
        self.stop_reason: Optional[StopRequest] = None  # why fit stopped early (a signal), None otherwise
        if resume_candidates:
            resume_folder, meta = self._load_newest_readable(resume_candidates)
            self.progress = Progress(**{k: meta[k] for k in Progress().as_dict()})
            self.scaler.load_state_dict(meta["scaler"])
            self.bad_files = dict(meta.get("bad_files", {}))
            self.config_changes = list(meta.get("config_changes", [])) + self._resume_changes
            logger.info("resumed from %s at step %d (%d samples consumed)", resume_folder, self.progress.step,
                        self.progress.consumed_samples)
        self.loader_factory = loader_factory or _default_loader_factory
        self.cost = sample_cost(cfg.model, cfg.sample_shapes())
        peak = cfg.monitor.peak_tflops
        if peak is None and self.device.type == "cuda":
            name = torch.cuda.get_device_name(self.device)
            peak = peak_tflops(name, cfg.model.dtype)  # the peak of the run's dtype on exactly this GPU
            if peak is None and ctx.is_main:
                logger.warning("MFU is not logged: %r is not in internlm/monitor/gpus.py; set monitor.peak_tflops to "
                               "its dense peak for model.dtype=%s", name, cfg.model.dtype)
        self.peak_tflops = peak
        self.writer = ScalarWriter(cfg.monitor.tensorboard_folder or os.path.join(cfg.ckpt.save_ckpt_folder,
                                                                                    "tensorboard"), ctx.is_main)
        self.history: list[dict] = []  # per-step scalars of this process (tests and reports read it)
        self._preemption: Optional[PreemptionFlag] = None  # fit's flag; train_step sums it over ranks
        self._stop_agreed: Optional[StopRequest] = None
        self._valid_dataset = None  # built at the first validation

    # ---------------------------------------------------------------------------------- initialisation

    def _resume_candidates(self) -> list[str]:
        """The checkpoints to resume from, newest first (the older ones are fallbacks); [] for a fresh start."""
        ck = self.cfg.ckpt
        if ck.auto_resume:
            if self.ctx.is_main:
                for step in incomplete_steps(ck.save_ckpt_folder):
                    logger.warning("skipping %s: no %s marker, i.e. a save that was interrupted; it is written anew "
                                   "when the run reaches step %d", step_folder(ck.save_ckpt_folder, step), MARKER, step)
            steps = complete_steps(ck.save_ckpt_folder)
            if steps:
                return [step_folder(ck.save_ckpt_folder, step) for step in reversed(steps)]
        info = ck.init_source()
        if info is not None and "all" in info.content:
            return [resolve_checkpoint(info.path)]
        return []

    def _load_newest_readable(self, candidates: list[str]) -> tuple[str, dict]:
        """Load the first candidate that reads (after checking that it was trained with the same experiment's
        config); with ckpt.fallback_on_corrupt, a corrupt one is set aside with a warning and the next one tried."""
        folder, *older = candidates
        while True:
            try:
                self._check_config_change(folder)
                return folder, self.manager.load(folder, self.meta, self.optimizer)
            except CorruptCheckpointError as exc:
                if not older or not self.cfg.ckpt.fallback_on_corrupt:
                    raise
                kept = self.manager.set_aside(folder)
                logger.warning("checkpoint %s is corrupt: %s. Resuming from the previous complete checkpoint %s "
                               "instead (ckpt.fallback_on_corrupt); the corrupt one is kept as %s", folder, exc,
                               older[0], kept)
                folder, *older = older

    def _check_config_change(self, folder: str) -> None:
        """List every config key that differs from the checkpoint's; stop (ConfigChangeError) on a change of
        experiment unless ckpt.allow_config_change, and on a model of another shape always (before the weights are
        loaded, instead of a state-dict error). Sets ``_resume_changes`` (recorded in the next checkpoints)."""
        self._resume_changes = []
        changes = changes_since(folder, self.cfg, self.world)  # CorruptCheckpointError naming an unreadable file
        mismatched = shape_mismatches(unwrap(self.meta.student).state_dict(), folder)
        allowed = self.cfg.ckpt.allow_config_change
        if changes:
            message = report(folder, changes, allowed)
            if any(c.experiment for c in changes) and not allowed:
                raise ConfigChangeError(message)
            if self.ctx.is_main:
                logger.warning(message)
        if mismatched:
            model_keys = "; ".join(str(c) for c in changes if c.key.startswith(("model.", "teacher.")))
            raise ConfigChangeError(
                f"checkpoint {folder} cannot be resumed: the model's parameters have another shape "
                f"({'; '.join(mismatched)}){f', because of {model_keys}' if model_keys else ''}. A run cannot go on "
                f"with another model shape, even with ckpt.allow_config_change: start a new run in another "
                f"ckpt.save_ckpt_folder (ckpt.load_ckpt_info initialises it from this checkpoint where shapes agree)")
        if changes:
            self._resume_changes = [{"step": read_meta(folder).get("step"), "time": time.strftime("%Y-%m-%d %H:%M:%S"),
                                     "changes": [c.as_record() for c in changes]}]

    def write_run_record(self) -> None:
        """The resolved config, the git commit and the command line, once per run (rank 0)."""
        if not self.ctx.is_main:
            return
        stamp = time.strftime("%Y%m%d-%H%M%S")
        folder = os.path.join(self.cfg.ckpt.save_ckpt_folder, "runs", stamp)
        os.makedirs(folder, exist_ok=True)
        atomic_write_json(os.path.join(folder, "config.json"), to_dict(self.cfg))
        atomic_write_json(os.path.join(folder, "run.json"), {
            "git_commit": git_commit(), "command": sys.argv, "world_size": self.world,
            "device": str(self.device), "parallel_mode": self.plan.mode,
            "grad_accumulation_fusion": self.plan.fusion is not None, "torch": torch.__version__,
            "start_step": self.progress.step, "config_changes": self._resume_changes})

    # ------------------------------------------------------------------------------------------ a step

    def _to_device(self, batch: dict) -> dict:
        return {k: (v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}

    def validate(self) -> dict[str, float]:
        """The losses on the validation set (data.valid_every): val_loss, val_loss_rep, ... (every rank)."""

        if self._valid_dataset is None:
            self._valid_dataset = build_valid_dataset(self.cfg.data, self.meta.joint)
        loader = build_valid_loader(self.cfg.data, self.ctx.rank, self.world, self.meta.joint, self._valid_dataset)
        temp = self.schedules.at(self.progress.step).teacher_temp
        with running_loader(loader) as batches:
            values = self.meta.evaluate((self._to_device(b) for b in batches), temp)
        if self.ctx.is_main:
            logger.info("validation at step %d: %s", self.progress.step,
                        " ".join(f"{k} {v:.4f}" for k, v in values.items()))
        return values

    def calibrate_prediction(self) -> dict:
        """data.calibration_takes: after the last step, the scale of the learned prediction change is chosen on the
        clips of the held-out training takes (train/prediction_base.py), saved in the checkpoint's meta.json and
        written to {save_ckpt_folder}/prediction_calibration.json."""

        data = self.cfg.data
        dataset = build_clip_dataset(data, data.egoexo_train_split, train=False, calibration=True)
        loader = build_valid_loader(data, self.ctx.rank, self.world, True, dataset)
        temp = self.schedules.at(self.progress.step).teacher_temp
        with running_loader(loader) as batches:
            result = self.meta.calibrate_prediction_change((self._to_device(b) for b in batches), temp)
        uids = dataset.index.poses.take_uids
        result.update(step=self.progress.step, takes=sorted(str(uids[k]) for k in np.unique(dataset.index.clip_takes)))
        if self.ctx.is_main:
            l_pred = dict(zip(result["scales"], result["l_pred"]))
            logger.info("prediction calibration on %d queries of %d held-out take(s): L_pred of base + a change "
                        "(a: nats) %s; a = %g kept", result["num_queries"], len(result["takes"]),
                        " ".join(f"{a:g}: {v:.5f}" for a, v in l_pred.items() if round(a * 10) == a * 10),
                        result["scale"])
            atomic_write_json(os.path.join(self.cfg.ckpt.save_ckpt_folder, CALIBRATION_FILE), result)
        return result

    def train_step(self, batch: dict) -> dict:
        """One optimizer step on this rank's batch of micro_num samples; returns the logged scalars."""
        cfg = self.cfg
        values = self.schedules.at(self.progress.step)
        apply_schedule(self.optimizer, values.lr, values.weight_decay, values.beta2)
        batch = self._to_device(batch)
        n = next(v for v in batch.values() if torch.is_tensor(v)).shape[0]
        chunks = cfg.data.gradient_accumulation
        chunk_size = n // chunks
        state = self.meta.begin_step(batch)
        self.plan.begin_step()
        for c in range(chunks):
            part = {k: v[c * chunk_size:(c + 1) * chunk_size] for k, v in batch.items() if torch.is_tensor(v)}
            with self.plan.grad_sync(self.meta.student, enabled=c == chunks - 1):
                loss = self.meta.chunk_loss(part, state, values.teacher_temp, chunk_size / n)
                (loss * self.scaler.scale).backward()
        self.plan.finish_step()

        norm = self._unscale_and_clip()
        # The step's one host sync: the gradient norm (its finiteness decides the update) read together with the
        # statistics, the pre-emption flag and the new bad files, summed over ranks in one all-reduce.
        new_bad = self._new_bad_files(batch)
        raised = self._preemption.raised if self._preemption is not None else None
        flags = [torch.full((1,), float(x), device=self.device)
                 for x in (raised is StopRequest.PREEMPTION, raised is StopRequest.INTERRUPT, len(new_bad))]
        sums = self.meta.reduce_step(state, extras=flags)
        grad_norm, *read = torch.cat([norm.reshape(1).float(), sums.values]).tolist()
        preempt_votes, interrupt_votes, bad_count = read[-3:]
        # a Ctrl-C on any rank outranks a pre-emption signal: no requeue
        self._stop_agreed = (StopRequest.INTERRUPT if interrupt_votes > 0 else
                             StopRequest.PREEMPTION if preempt_votes > 0 else None)
        finite = math.isfinite(grad_norm)
        if finite:
            self.meta.cancel_last_layer_gradients(self.progress.step)
            self.optimizer.step()
        scalars = self.meta.end_step(state, values.momentum, update=finite, sums=sums, read=read)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.update(found_inf=not finite)
        p = self.progress
        p.iteration += 1
        p.consumed_samples += self.global_batch
        self._note_bad_files(new_bad, bad_count)
        if finite:
            p.step += 1
            self.consecutive_skips = 0
        else:
            p.skipped_steps += 1
            self.consecutive_skips += 1
            logger.warning("step %d: non-finite gradients, update skipped (%d so far); loss scale now %g",
                           p.step, p.skipped_steps, self.scaler.scale)
        scalars.update(lr=values.lr, weight_decay=values.weight_decay, momentum=values.momentum,
                       teacher_temp=values.teacher_temp, beta2=values.beta2, grad_norm=grad_norm,
                       loss_scale=self.scaler.scale, skipped_steps=p.skipped_steps, bad_samples=p.bad_samples,
                       update_applied=float(finite))
        return scalars

    def _new_bad_files(self, batch: dict) -> dict[str, str]:
        """The unreadable input files of this batch not met before (path -> reason)."""
        if "bad_files" not in batch:
            return {}
        return {path: why for path, why in parse_bad_files(batch["bad_files"]).items() if path not in self.bad_files}

    def _note_bad_files(self, new: dict[str, str], count_all_ranks: float) -> None:
        """Each unreadable input file is warned about once per run, for all ranks and loader workers (which do not
        warn themselves, see _default_loader_factory), and counted once in bad_samples. ``count_all_ranks``: the
        new files of every rank (read with the step's statistics): the names are gathered only when there are."""
        if self.world > 1 and count_all_ranks > 0:
            gathered = [None] * self.world
            dist.all_gather_object(gathered, new)
            new = {path: why for part in reversed(gathered) for path, why in part.items()}
        if self.ctx.is_main:
            for count, path in enumerate(sorted(new), len(self.bad_files) + 1):
                logger.warning("bad input file %s: %s; the samples it cannot give are replaced by random valid ones "
                               "(%d distinct bad files so far)", path, new[path], count)
        self.bad_files.update(new)
        self.progress.bad_samples = len(self.bad_files)

    def _unscale_and_clip(self) -> torch.Tensor:
        """Undo the loss scale, clip to clip_grad_norm; returns the norm before clipping, on the device (inf/nan
        when some gradient is not finite). Every rank gets the same norm: DDP and ZeRO-1 hold the same all-reduced
        gradients, FSDP2's norm is that of the whole gradient.

        The loss scale and the clip factor are one factor applied in one place: a fused AdamW divides each gradient
        by it as it reads it (its grad_scale), else one multiply of every gradient (two passes over the gradients
        fewer than unscaling then clipping)."""
        params = [p for p in unwrap(self.meta.student).parameters() if p.grad is not None]
        max_norm = self.cfg.hybrid_zero_optimizer.clip_grad_norm
        if self.plan.mode == "fsdp" or not hasattr(torch.nn.utils, "get_total_norm"):  # torch < 2.6; DTensors
            if self.scaler.scale != 1.0:
                torch._foreach_mul_([p.grad for p in params], 1.0 / self.scaler.scale)
            norm = torch.nn.utils.clip_grad_norm_(params, max_norm, error_if_nonfinite=False, foreach=True)
            if hasattr(norm, "full_tensor"):
                norm = norm.full_tensor()
            return norm.detach()
        grads = [p.grad for p in params]
        norm = torch.nn.utils.get_total_norm(grads, error_if_nonfinite=False, foreach=True) / self.scaler.scale
        # the gradients are divided by scale / clip factor (clip factor <= 1: clip_grad_norm_'s formula)
        divisor = self.scaler.scale / torch.clamp(max_norm / (norm + 1e-6), max=1.0)
        inner = self.plan.inner_optimizer(self.optimizer)
        if inner.defaults.get("fused"):
            inner.grad_scale = divisor.float().reshape(())
        else:
            torch._foreach_div_(grads, divisor)
        return norm.detach()

    # ------------------------------------------------------------------------------------------ the loop

    def save(self) -> str:
        folder = step_folder(self.cfg.ckpt.save_ckpt_folder, self.progress.step)
        if is_complete(folder):
            return folder  # this step is already saved (e.g. pre-emption right after a periodic save)
        progress = dict(self.progress.as_dict(), scaler=self.scaler.state_dict(), bad_files=self.bad_files,
                        config_changes=self.config_changes)
        return self.manager.save(self.progress.step, self.meta, self.optimizer, progress)

    def fit(self, max_iterations: Optional[int] = None) -> list[dict]:
        """Train until data.total_steps updates (or ``max_iterations`` batches, for tests). SIGTERM/SIGUSR1
        (slurm pre-emption) and a first SIGINT (Ctrl-C) make every rank save a checkpoint at the next step boundary
        and stop (``stop_reason`` says which); after a pre-emption under slurm the job is requeued. Loader workers
        are shut down on the way out (killed at once when an exception leaves)."""
        cfg = self.cfg
        total = cfg.data.total_steps
        if cfg.ckpt.enable_save_ckpt:
            self.manager.check_room_for_a_checkpoint(self.meta, self.optimizer)
        self.write_run_record()
        self._trim_records()
        loader = self.loader_factory(cfg, self.ctx, self.progress.consumed_samples)
        timer = StepTimer(total)
        start_iteration = self.progress.iteration
        every = cfg.monitor.log_every
        self.meta.train()
        with PreemptionFlag(announce=self.ctx.is_main) as preempt, running_loader(loader) as batches:
            self._preemption = preempt  # train_step sums it over ranks while fit runs
            try:
                while self.progress.step < total:
                    if max_iterations is not None and self.progress.iteration - start_iteration >= max_iterations:
                        break
                    try:
                        batch = next(batches)
                    except StopIteration:
                        logger.info("data exhausted after %d samples (train_one_epoch)", self.progress.consumed_samples)
                        break
                    self._record_samples(batch)
                    scalars = self.train_step(batch)
                    dt = timer.tick()
                    step = self.progress.step
                    valid_every = cfg.data.valid_every
                    if valid_every and scalars["update_applied"] and (step % valid_every == 0 or step == total):
                        scalars.update(self.validate())
                        timer.resume()  # the validation is not a training step's time
                    if step == total and scalars["update_applied"] and cfg.data.calibration_takes:
                        scalars["prediction_change_scale"] = self.calibrate_prediction()["scale"]
                        timer.resume()
                    self._account(scalars, dt)
                    self._stop_if_runaway()
                    if self.ctx.is_main and (step % every == 0 or step == total or step == 1):
                        logger.info(self._log_line(scalars, timer))
                    if scalars["update_applied"] and cfg.ckpt.enable_save_ckpt and (
                            step % cfg.ckpt.checkpoint_every == 0 or step == total):
                        self.save()
                    stop = self._stop_agreed  # every rank's flags, summed with the step's statistics
                    if stop is not None:
                        logger.warning("%s: saving step %d and stopping", stop.value, step)
                        self.save()
                        self.manager.wait()
                        self.stop_reason = stop
                        if stop is StopRequest.PREEMPTION:
                            requeue_slurm_job(self.ctx.is_main)
                        break
            finally:
                self._preemption = None  # its signal handlers leave with the with-block: no stale flag
        self.manager.wait()
        self.writer.close()
        return self.history

    def _stop_if_runaway(self) -> None:
        """Every rank sees the same all-reduced gradient norm, so every rank stops at the same step."""
        limit = self.cfg.hybrid_zero_optimizer.max_consecutive_skipped_steps
        if self.scaler.overflowed_at_min_scale:
            why = (f"non-finite gradients with the fp16 loss scale already at its minimum "
                   f"(grad_scaler.fp16.min_scale={self.scaler.min_scale:g}): scaling can no longer avoid them")
        elif limit and self.consecutive_skips >= limit:
            why = (f"non-finite gradients in {self.consecutive_skips} consecutive steps "
                   f"(hybrid_zero_optimizer.max_consecutive_skipped_steps={limit})")
        else:
            return
        latest = latest_checkpoint(self.cfg.ckpt.save_ckpt_folder)
        message = (f"training stopped at step {self.progress.step}: {why}. The run has diverged: lower adam.lr, "
                   f"check the data, or use bf16/fp32; the newest checkpoint is {latest or 'none'}")
        logger.error(message)
        raise RunawayTrainingError(message)

    def _account(self, scalars: dict, dt: float) -> None:
        """Throughput figures, then the step's scalars to TensorBoard, metrics.jsonl and ``history``."""
        samples_s = self.global_batch / dt
        scalars.update(samples_per_s=samples_s,
                       tokens_per_s=samples_s * (self.cost.student_tokens + self.cost.teacher_tokens))
        if self.device.type == "cuda":
            scalars["tflops"] = samples_s * self.cost.train_flops / 1e12 / self.world
            if self.peak_tflops:
                scalars["mfu"] = scalars["tflops"] / self.peak_tflops
        scalars["step"] = self.progress.step
        scalars["iteration"] = self.progress.iteration
        self.history.append(scalars)
        self.writer.write(self.progress.step, scalars)
        if self.ctx.is_main and self.cfg.monitor.metrics_file:
            with open(self._metrics_path(), "a") as f:
                f.write(json.dumps(_json_numbers(scalars)) + "\n")

    def _metrics_path(self) -> str:
        return os.path.join(self.cfg.ckpt.save_ckpt_folder, "metrics.jsonl")

    def _samples_path(self) -> str:
        return os.path.join(self.cfg.ckpt.save_ckpt_folder, f"samples_rank{self.ctx.rank}.jsonl")

    def _record_samples(self, batch: dict) -> None:
        if self.cfg.monitor.record_sample_ids:
            with open(self._samples_path(), "a") as f:
                f.write(json.dumps({"iteration": self.progress.iteration + 1,
                                    "sample_ids": [int(i) for i in batch["sample_id"]]}) + "\n")

    def _trim_records(self) -> None:
        """Drop lines of iterations after the checkpoint we resumed from (a crash leaves them behind)."""
        paths = [self._samples_path()] if self.cfg.monitor.record_sample_ids else []
        if self.ctx.is_main and self.cfg.monitor.metrics_file:
            paths.append(self._metrics_path())
        for path in paths:
            if not os.path.isfile(path):
                continue
            with open(path) as f:
                lines = [ln for ln in f if ln.strip() and json.loads(ln)["iteration"] <= self.progress.iteration]
            atomic_write_text(path, "".join(lines))

    def _log_line(self, s: dict, timer: StepTimer) -> str:
        p, total = self.progress, self.cfg.data.total_steps
        terms = " ".join(f"{name[len('loss_'):]} {s[name]:.4f}" for name in self.meta.loss_terms)
        line = (f"step {p.step}/{total} | loss {s['loss']:.4f} ({terms}) | lr {s['lr']:.3g} wd {s['weight_decay']:.3g}"
                f" m {s['momentum']:.5f} temp {s['teacher_temp']:.3g} | gnorm {s['grad_norm']:.3g}"
                f" scale {s['loss_scale']:g} skipped {p.skipped_steps} bad {p.bad_samples}"
                f" | H(t) {s['teacher_entropy']:.3f} KL {s['kl_teacher_student']:.3f} std {s['feature_std']:.4f}"
                f" | {s['samples_per_s']:.1f} samples/s")
        if "mfu" in s:
            line += f" {s['tflops']:.1f} TFLOP/s MFU {100 * s['mfu']:.1f}%"
        return line + f" | ETA {timer.eta(p.step)}"


def _json_numbers(scalars: dict) -> dict:
    """NaN and inf -> None (null): JSON has no token for them."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in scalars.items()}


def _default_loader_factory(cfg: TrainConfig, ctx: DistContext, consumed: int) -> Iterator[dict]:

    dataset = build_train_dataset(cfg.data, joint=cfg.loss.is_joint)
    if hasattr(dataset, "bad_files"):
        dataset.bad_files.warn = False  # Trainer._note_bad_files warns, once for all ranks and workers
    return build_train_loader(cfg.data, rank=ctx.rank, world_size=ctx.world_size, consumed=consumed,
                              dataset=dataset, joint=cfg.loss.is_joint)
