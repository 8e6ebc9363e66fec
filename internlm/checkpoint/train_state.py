"""Save and restore the whole training state, on any number of ranks, resumable on any other number.

Weights go to the unsharded files of ``layout.py`` (gathered under FSDP2). The optimizer's per-parameter Adam
moments and the DINO centers go through torch.distributed.checkpoint (DCP), keyed by parameter name: every rank
writes what it holds (all of it when replicated, its ZeRO-1 partition, its FSDP2 shards) and reads what it will
hold, so a run saved on N ranks in one mode resumes on M ranks in another. Progress (step, consumed samples,
scaler ...) goes to meta.json, RNG states to rng/rank{r}.pt. The COMPLETE marker is written last.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import time
import warnings
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from internlm.config.schema import TrainConfig
from internlm.parallel.data_parallel import DataParallelPlan, unwrap

from .atomic import atomic_torch_save, mark_complete
from .layout import (
    RNG_DIR,
    STUDENT_FILE,
    TEACHER_FILE,
    TRAIN_STATE_DIR,
    complete_steps,
    is_complete,
    read_meta,
    step_folder,
)
from .provenance import git_commit
from .weights import write_weights

logger = logging.getLogger(__name__)

ADAM_KEYS = ("step", "exp_avg", "exp_avg_sq")
# DCP warns on every single-process save/load that it assumes a single process: that is intended here.
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")


def _barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _is_fsdp(plan: DataParallelPlan) -> bool:
    return plan.mode == "fsdp"


def full_state_dict(model: torch.nn.Module, plan: DataParallelPlan) -> dict:
    """The unsharded state dict (a collective under FSDP2; rank 0 gets the tensors, on CPU)."""
    if _is_fsdp(plan):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return unwrap(model).state_dict()


def load_full_state_dict(model: torch.nn.Module, state: dict, plan: DataParallelPlan, strict: bool = True):
    if _is_fsdp(plan):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        return set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, strict=strict))
    return unwrap(model).load_state_dict(state, strict=strict)


def _optimizer_tensors(plan: DataParallelPlan, student, optimizer, allocate: bool) -> dict:
    """{"optim.{param}.{step|exp_avg|exp_avg_sq}": tensor} for the parameters this rank steps. With
    ``allocate``, missing states are created (zeros, the layout of the parameter) to be loaded into."""
    inner = plan.inner_optimizer(optimizer)
    out = {}
    for name, p in plan.owned_parameters(student, optimizer):
        state = inner.state[p]
        if allocate and not state:
            fused = any(g.get("fused") for g in inner.param_groups)
            step = torch.zeros((), dtype=torch.float32, device=p.device if fused else "cpu")
            state.update(step=step, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
        if not state:
            continue  # never stepped yet (e.g. a save at step 0)
        for key in ADAM_KEYS:
            out[f"optim.{name}.{key}"] = state[key]
    return out


class CheckpointManager:
    def __init__(self, cfg: TrainConfig, plan: DataParallelPlan):
        self.cfg = cfg
        self.plan = plan
        self.folder = cfg.ckpt.save_ckpt_folder
        self._pending: Optional[tuple] = None  # (future, step folder) of an async save

    # -------------------------------------------------------------------------------------------- save

    def save(self, step: int, meta_arch, optimizer, progress: dict) -> str:
        """Write checkpoint ``step``; returns its folder. Every rank must call this."""
        self.wait()
        folder = step_folder(self.folder, step)
        rank = _rank()
        t0 = time.perf_counter()
        if rank == 0 and os.path.isdir(folder):
            shutil.rmtree(folder)  # an interrupted earlier save of this step (complete ones are never rewritten)
        _barrier()
        student_state = full_state_dict(meta_arch.student, self.plan)
        teacher_state = full_state_dict(meta_arch.teacher, self.plan)
        if rank == 0:
            world = dist.get_world_size() if dist.is_initialized() else 1
            meta = dict(progress, step=step, world_size=world, git_commit=git_commit(), stage=self.cfg.stage,
                        parallel_mode=self.plan.mode, time=time.strftime("%Y-%m-%d %H:%M:%S"))
            write_weights(folder, student_state, teacher_state, self.cfg, meta)
        del student_state, teacher_state
        tensors = _optimizer_tensors(self.plan, meta_arch.student, optimizer, allocate=False)
        tensors["rep_center"] = meta_arch.rep_center
        tensors["pred_center"] = meta_arch.pred_center
        atomic_torch_save(rng_state(), os.path.join(folder, RNG_DIR, f"rank{rank}.pt"))
        state_dir = os.path.join(folder, TRAIN_STATE_DIR)
        if self.cfg.ckpt.async_save and dist.is_initialized():
            future = dcp.async_save(tensors, checkpoint_id=state_dir)
            self._pending = (future, folder)
            logger.info("checkpoint %s: weights written, optimizer state saving in the background", folder)
            return folder
        dcp.save(tensors, checkpoint_id=state_dir)
        self._finish(folder)
        logger.info("checkpoint %s written in %.1fs", folder, time.perf_counter() - t0)
        return folder

    def _finish(self, folder: str) -> None:
        _barrier()
        if _rank() == 0:
            mark_complete(folder)
            self._publish_teacher(folder)
            self._prune()
        _barrier()

    def _publish_teacher(self, folder: str) -> None:
        """ckpt.save_teacher_ckpt_folder: the teacher's weights also at {that}/{step}/ (the authors' separate teacher
        folder), as a hard link to the checkpoint's file (a copy across file systems)."""
        target_root = self.cfg.ckpt.save_teacher_ckpt_folder
        if not target_root:
            return
        target = os.path.join(target_root, os.path.basename(folder))
        os.makedirs(target, exist_ok=True)
        src, dst = os.path.join(folder, TEACHER_FILE), os.path.join(target, TEACHER_FILE)
        if os.path.exists(dst):
            os.remove(dst)
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    def wait(self) -> None:
        """Finish a pending async save (its marker is written only now, after every rank's files exist)."""
        if self._pending is None:
            return
        future, folder = self._pending
        self._pending = None
        future.result()
        self._finish(folder)
        logger.info("checkpoint %s complete", folder)

    def _prune(self) -> None:
        keep = self.cfg.ckpt.keep_last
        if keep <= 0:
            return
        for old in complete_steps(self.folder)[:-keep]:
            shutil.rmtree(step_folder(self.folder, old), ignore_errors=True)
            if self.cfg.ckpt.save_teacher_ckpt_folder:
                shutil.rmtree(step_folder(self.cfg.ckpt.save_teacher_ckpt_folder, old), ignore_errors=True)

    # -------------------------------------------------------------------------------------------- load

    def load(self, folder: str, meta_arch, optimizer) -> dict:
        """Restore everything from a complete checkpoint; returns its meta (progress) dict."""
        if not is_complete(folder):
            raise FileNotFoundError(f"{folder} has no COMPLETE marker: an interrupted save cannot be resumed")
        for model, file in ((meta_arch.student, STUDENT_FILE), (meta_arch.teacher, TEACHER_FILE)):
            state = torch.load(os.path.join(folder, file), map_location="cpu", weights_only=True, mmap=True)
            load_full_state_dict(model, state, self.plan, strict=True)
        tensors = _optimizer_tensors(self.plan, meta_arch.student, optimizer, allocate=True)
        tensors["rep_center"] = meta_arch.rep_center
        tensors["pred_center"] = meta_arch.pred_center
        dcp.load(tensors, checkpoint_id=os.path.join(folder, TRAIN_STATE_DIR))
        meta = read_meta(folder)
        rank = _rank()
        rng_file = os.path.join(folder, RNG_DIR, f"rank{rank}.pt")
        if os.path.isfile(rng_file) and meta.get("world_size") == (dist.get_world_size() if dist.is_initialized()
                                                                      else 1):
            set_rng_state(torch.load(rng_file, weights_only=False))
        else:
            logger.info("RNG states not restored (saved on %s ranks); data order and augmentation do not depend "
                        "on them", meta.get("world_size"))
        return meta
