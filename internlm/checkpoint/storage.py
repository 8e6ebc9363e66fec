"""Whether a run can write where it saves: a write probe of each output folder at start-up, room for one
checkpoint, and a full disk named as such ("no space left on device", the folder, the bytes needed) when a save
runs out of it."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from typing import Iterable, Optional

import torch

from internlm.initialize.crash import disk_full_in

PROBE_BYTES = 4096


class UnwritableFolderError(RuntimeError):
    """An output folder cannot be created or written; the message names the config key, the folder and why."""


class DiskFullError(RuntimeError):
    """No space left on device; the message names the folder, the bytes needed and the bytes free."""


def human_bytes(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def free_bytes(folder: str) -> int:
    """Free bytes on the file system of ``folder`` (or of its nearest existing parent)."""
    path = os.path.abspath(folder)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return shutil.disk_usage(path).free


def probe_writable(folder: str, key: str) -> None:
    """Create ``folder`` if needed and write, fsync and delete a small file there. Raises UnwritableFolderError (or
    DiskFullError) naming ``key``, the folder and the reason."""
    try:
        os.makedirs(folder, exist_ok=True)
        fd, path = tempfile.mkstemp(prefix=".write-probe-", dir=folder)
        try:
            os.write(fd, b"\0" * PROBE_BYTES)
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(path)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise DiskFullError(f"no space left on device: {key} {folder} cannot take even {PROBE_BYTES} bytes "
                                f"({human_bytes(free_bytes(folder))} free); the run could never save") from None
        raise UnwritableFolderError(f"{key} {folder} is not writable: {exc.strerror or exc}"
                                    f"{f' ({exc.filename})' if exc.filename and exc.filename != folder else ''}; "
                                    f"the run could never write there, so it stops before training") from None


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if torch.is_tensor(t))


def disk_full_error(exc: BaseException, folder: str, needed: int, what: str) -> Optional[DiskFullError]:
    """A DiskFullError for ``exc`` when a full disk is behind it (else None): ``what`` (e.g. "checkpoint step 12")
    needed ``needed`` bytes in ``folder``. Behind it means an ENOSPC OSError in the exception's chain, or a failed
    write with less than ``needed`` left on the file system afterwards: torch's zip writer often reports a full disk
    only as ``RuntimeError: ... unexpected pos`` (a short write it noticed), with no OSError anywhere."""
    free = free_bytes(folder)
    if disk_full_in(exc) is None and (free >= needed or isinstance(exc, (KeyboardInterrupt, SystemExit))):
        return None
    return DiskFullError(f"no space left on device: {what} in {folder} needs at least {human_bytes(needed)} and the "
                         f"file system has {human_bytes(free)} free; free some space or point "
                         f"ckpt.save_ckpt_folder at a larger file system (the run resumes from its newest complete "
                         f"checkpoint)")
