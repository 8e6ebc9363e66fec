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
from torch.distributed.checkpoint.api import CheckpointException

from internlm.config.schema import TrainConfig
from internlm.initialize.launch import messages_of_all_ranks
from internlm.parallel.data_parallel import DataParallelPlan, unwrap

from .atomic import atomic_torch_save, mark_complete
from .layout import (
    META_FILE,
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
from .storage import DiskFullError, disk_full_error, free_bytes, human_bytes, tensor_bytes
from .weights import take_legacy_change_scale, write_weights

logger = logging.getLogger(__name__)

ADAM_KEYS = ("step", "exp_avg", "exp_avg_sq")
# DCP warns on every single-process save/load that it assumes a single process: that is intended here.
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")


class CorruptCheckpointError(RuntimeError):
    """A file of a complete checkpoint cannot be read; the message names it (on every rank)."""


def _read(path: str, read):
    """``read(path)``, or CorruptCheckpointError naming the file: truncated or garbled files fail in many ways."""
    try:
        return read(path)
    except Exception as exc:  # noqa: BLE001 (torch.load, json and unpickling raise many kinds; all mean the same)
        raise CorruptCheckpointError(f"{path} cannot be read ({type(exc).__name__}: {exc})") from exc


def _check_train_state(state_dir: str) -> None:
    """Every byte range the DCP metadata points to must be on disk (a truncated .distcp is found here, by name,
    before the collective load)."""
    metadata = _read(os.path.join(state_dir, ".metadata"), lambda _: dcp.FileSystemReader(state_dir).read_metadata())
    needed: dict[str, int] = {}
    for info in metadata.storage_data.values():
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), info.offset + info.length)
    for name, size in sorted(needed.items()):
        path = os.path.join(state_dir, name)
        if not os.path.isfile(path):
            raise CorruptCheckpointError(f"{path} is missing")
        if os.path.getsize(path) < size:
            raise CorruptCheckpointError(f"{path} is truncated ({os.path.getsize(path)} of {size} bytes)")


def _raise_on_every_rank(error: Optional[CorruptCheckpointError]) -> None:
    """If any rank could not read its files, every rank raises (naming them) before a collective load starts."""
    messages = messages_of_all_ranks(str(error) if error is not None else None)
    if messages:
        raise CorruptCheckpointError("; ".join(messages))


def _barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def device_rng(device: torch.device):
    """The random-number module of ``device``'s type (get_rng_state(device) / set_rng_state(state, device)), or
    None for the CPU (whose generator is torch's own)."""
    return torch.cuda if device.type == "cuda" else None


def rng_state(device: torch.device, accelerator=None) -> dict:
    """This rank's generators: torch's CPU, numpy's, python's and its own device's, only that one. (Saving every
    visible GPU's state, as get_rng_state_all does, ties a checkpoint to how many GPUs the launcher let each process
    see: 8 under torchrun, 1 under srun.) ``accelerator`` stands in for torch.cuda."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    accelerator = accelerator or device_rng(device)
    if accelerator is not None:
        state["device"] = {"type": device.type, "state": accelerator.get_rng_state(device)}
    return state


def set_rng_state(state: dict, device: torch.device, accelerator=None) -> None:
    """Restore ``rng_state``'s generators, the saved device state into this rank's device, whatever its index and
    however many devices are visible."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    accelerator = accelerator or device_rng(device)
    saved = state.get("device")
    if accelerator is not None and saved is not None and saved["type"] == device.type:
        accelerator.set_rng_state(saved["state"], device)
    elif accelerator is not None and "cuda" in state:
        logger.info("the checkpoint holds the CUDA generator of every GPU its process saw, not which one was its "
                    "own (an older format): this device's generator is not restored")


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
        self._pending: Optional[tuple] = None  # (future, step folder, bytes needed) of an async save
        self._async_group = None  # the background save's own process group, created at its first use

    # -------------------------------------------------------------------------------------------- save

    def save(self, step: int, meta_arch, optimizer, progress: dict) -> str:
        """Write checkpoint ``step``; returns its folder. Every rank must call this. A full disk raises
        DiskFullError naming the folder and the bytes the checkpoint needs."""
        self.wait()
        folder = step_folder(self.folder, step)
        rank = _rank()
        t0 = time.perf_counter()
        if rank == 0 and os.path.isdir(folder):
            # an interrupted earlier save of this step (complete ones are never rewritten); the run lock
            # (run_lock.py) makes sure no other live run is writing it
            shutil.rmtree(folder)
        _barrier()
        needed = self.checkpoint_bytes(meta_arch, optimizer)
        try:
            student_state = full_state_dict(meta_arch.student, self.plan)
            teacher_state = full_state_dict(meta_arch.teacher, self.plan)
            if rank == 0:
                world = dist.get_world_size() if dist.is_initialized() else 1
                meta = dict(progress, step=step, world_size=world, micro_num=self.cfg.data.micro_num,
                            git_commit=git_commit(), stage=self.cfg.stage,
                            parallel_mode=self.plan.mode, time=time.strftime("%Y-%m-%d %H:%M:%S"),
                            **meta_arch.meta_state())
                write_weights(folder, student_state, teacher_state, self.cfg, meta)
            del student_state, teacher_state
            tensors = _optimizer_tensors(self.plan, meta_arch.student, optimizer, allocate=False)
            tensors.update(meta_arch.center_tensors())
            atomic_torch_save(rng_state(self.plan.device), os.path.join(folder, RNG_DIR, f"rank{rank}.pt"))
            state_dir = os.path.join(folder, TRAIN_STATE_DIR)
            if self.cfg.ckpt.async_save and dist.is_initialized():
                if self._async_group is None:
                    # The background save runs collectives (DCP's plan gather) while training runs DDP's; on one
                    # process group they interleave differently on each rank and deadlock. gloo: the staged state
                    # is on the CPU, and a gloo group works on GPU runs as well.
                    self._async_group = dist.new_group(backend="gloo")
                future = dcp.async_save(tensors, checkpoint_id=state_dir, process_group=self._async_group)
                self._pending = (future, folder, needed)
                logger.info("checkpoint %s: weights written, optimizer state saving in the background", folder)
                return folder
            dcp.save(tensors, checkpoint_id=state_dir)
        except BaseException as exc:
            full = disk_full_error(exc, folder, needed, f"checkpoint step {step}")
            if full is None:
                raise
            raise full from exc
        self._finish(folder)
        logger.info("checkpoint %s written in %.1fs", folder, time.perf_counter() - t0)
        return folder

    def checkpoint_bytes(self, meta_arch, optimizer) -> int:
        """About the bytes of one checkpoint (all ranks): student and teacher weights, Adam's two moments of every
        trained parameter, the centres. A lower bound: file formats add a little."""
        student = list(unwrap(meta_arch.student).state_dict().values())
        trained = [p for p in unwrap(meta_arch.student).parameters() if p.requires_grad]
        return (tensor_bytes(student) + tensor_bytes(unwrap(meta_arch.teacher).state_dict().values())
                + 2 * sum(p.numel() * 4 for p in trained)
                + tensor_bytes(list(meta_arch.center_tensors().values())))

    def check_room_for_a_checkpoint(self, meta_arch, optimizer) -> None:
        """Before training: stop (DiskFullError, on every rank) when the save folder's file system cannot hold even
        one checkpoint, instead of at the first save."""
        needed = self.checkpoint_bytes(meta_arch, optimizer)
        free = free_bytes(self.folder)
        fits = torch.tensor([1.0 if free >= needed else 0.0])
        if dist.is_initialized() and dist.get_world_size() > 1:
            fits = fits.cuda() if dist.get_backend() == "nccl" else fits
            dist.all_reduce(fits, op=dist.ReduceOp.MIN)
        if not fits.item():
            raise DiskFullError(f"no space left on device: one checkpoint in {self.folder} needs at least "
                                f"{human_bytes(needed)} and the file system has {human_bytes(free)} free (on this "
                                f"or another rank); the run could never save, so it stops before training")

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
        future, folder, needed = self._pending
        self._pending = None
        try:
            future.result()
        except BaseException as exc:
            full = disk_full_error(exc, folder, needed, f"checkpoint {os.path.basename(folder)}")
            if full is None:
                raise
            raise full from exc
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

    def set_aside(self, folder: str) -> str:
        """Rename a corrupt checkpoint to {step}.corrupt: kept for inspection, never resumed from again, and the
        run can write that step anew. Every rank must call this."""
        target, n = folder + ".corrupt", 1
        while os.path.exists(target):
            target, n = f"{folder}.corrupt{n}", n + 1
        _barrier()
        if _rank() == 0:
            os.rename(folder, target)
        _barrier()
        return target

    def _read_files(self, folder: str) -> tuple[dict, list[dict], Optional[dict]]:
        """(meta, [student, teacher weights], this rank's RNG states or None), and the sharded state checked."""
        meta = _read(os.path.join(folder, META_FILE), lambda _: read_meta(folder))
        weights = [_read(os.path.join(folder, file), lambda p: torch.load(p, map_location="cpu", weights_only=True,
                                                                          mmap=True))
                   for file in (STUDENT_FILE, TEACHER_FILE)]
        _check_train_state(os.path.join(folder, TRAIN_STATE_DIR))
        rng_file = os.path.join(folder, RNG_DIR, f"rank{_rank()}.pt")
        rng = None
        if os.path.isfile(rng_file) and meta.get("world_size") == (dist.get_world_size() if dist.is_initialized()
                                                                      else 1):
            rng = _read(rng_file, lambda p: torch.load(p, weights_only=False))
        return meta, weights, rng

    def load(self, folder: str, meta_arch, optimizer) -> dict:
        """Restore everything from a complete checkpoint; returns its meta (progress) dict. A file that cannot be
        read raises CorruptCheckpointError naming it, on every rank."""
        if not is_complete(folder):
            raise FileNotFoundError(f"{folder} has no COMPLETE marker: an interrupted save cannot be resumed")
        files, error = None, None
        try:
            files = self._read_files(folder)
        except CorruptCheckpointError as exc:
            error = exc
        _raise_on_every_rank(error)
        meta, weights, rng = files
        take_legacy_change_scale(*weights, meta)
        meta_arch.load_meta_state(meta)
        for model, state in zip((meta_arch.student, meta_arch.teacher), weights):
            load_full_state_dict(model, state, self.plan, strict=True)
        tensors = _optimizer_tensors(self.plan, meta_arch.student, optimizer, allocate=True)
        tensors.update(meta_arch.center_tensors())
        state_dir = os.path.join(folder, TRAIN_STATE_DIR)
        try:
            dcp.load(tensors, checkpoint_id=state_dir)
        except CheckpointException as exc:  # raised on every rank
            raise CorruptCheckpointError(f"{state_dir} cannot be read ({exc})") from exc
        if rng is not None:
            set_rng_state(rng, self.plan.device)
        else:
            logger.info("RNG states not restored (saved on %s ranks); data order and augmentation do not depend "
                        "on them", meta.get("world_size"))
        return meta
