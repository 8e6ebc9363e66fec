"""Claim the save folder before a run writes anything: the run lock (rank 0) and a write probe of every folder the
run will write (each rank its own), agreed by all ranks, so that a run that could never save, or that would share
its folder with a live run, stops at start on every rank with one message."""

from __future__ import annotations

import os
from typing import Optional

from internlm.checkpoint.run_lock import FolderInUseError, RunLock
from internlm.checkpoint.storage import DiskFullError, UnwritableFolderError, probe_writable
from internlm.config import TrainConfig
from internlm.initialize.launch import DistContext, messages_of_all_ranks

CLAIM_ERRORS = (FolderInUseError, UnwritableFolderError, DiskFullError)


def tensorboard_folder(cfg: TrainConfig) -> str:
    return cfg.monitor.tensorboard_folder or os.path.join(cfg.ckpt.save_ckpt_folder, "tensorboard")


def folders_written(cfg: TrainConfig, is_main: bool) -> list[tuple[str, str]]:
    """(config key, folder) of what this rank writes: every rank its checkpoint files and log in the save folder;
    rank 0 also the metrics (there too), TensorBoard and the teacher copies."""
    save = cfg.ckpt.save_ckpt_folder
    folders = [("ckpt.save_ckpt_folder", save), ("ckpt.save_ckpt_folder (logs)", os.path.join(save, "logs"))]
    if is_main:
        folders.append(("monitor.tensorboard_folder", tensorboard_folder(cfg)))
        if cfg.ckpt.save_teacher_ckpt_folder:
            folders.append(("ckpt.save_teacher_ckpt_folder", cfg.ckpt.save_teacher_ckpt_folder))
    return folders


def claim_run_folder(cfg: TrainConfig, ctx: DistContext) -> Optional[RunLock]:
    """Rank 0 takes the save folder's lock (a notice when it takes over a stale one), every rank probes the folders
    it writes; any failure raises the same error on every rank (FolderInUseError, UnwritableFolderError or
    DiskFullError). Returns the lock on rank 0 (release it at the end of the run; its ``notice`` says whether a
    stale lock was taken over, for the log), None on the others."""
    if not cfg.ckpt.save_ckpt_folder:
        raise UnwritableFolderError("ckpt.save_ckpt_folder is not set: the run needs a folder for logs and checkpoints")
    lock = RunLock(cfg.ckpt.save_ckpt_folder) if ctx.is_main else None
    error: Optional[Exception] = None
    try:
        for key, folder in folders_written(cfg, ctx.is_main)[:1]:
            probe_writable(folder, key)  # the save folder first: the lock goes there
        if lock is not None:
            lock.acquire()
        for key, folder in folders_written(cfg, ctx.is_main)[1:]:
            probe_writable(folder, key)
    except CLAIM_ERRORS as exc:
        error = exc
    messages = messages_of_all_ranks(f"{type(error).__name__}\t{error}" if error is not None else None)
    if messages:
        if lock is not None:
            lock.release()
        name, text = messages[0].split("\t", 1)
        raise next(e for e in CLAIM_ERRORS if e.__name__ == name)(text)
    return lock
