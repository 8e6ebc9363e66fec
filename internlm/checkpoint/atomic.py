"""Atomic file writes: write to a temporary name in the same folder, fsync, rename. A crash leaves either the old
file or the new one, never half of one."""

from __future__ import annotations

import json
import os
import tempfile

import torch

from .layout import MARKER


def _atomic_replace(path: str, write) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_torch_save(obj, path: str) -> None:
    _atomic_replace(path, lambda f: torch.save(obj, f))


def atomic_write_text(path: str, text: str) -> None:
    _atomic_replace(path, lambda f: f.write(text.encode()))


def atomic_write_json(path: str, payload, indent: int = 1) -> None:
    atomic_write_text(path, json.dumps(payload, indent=indent, allow_nan=True))


def mark_complete(folder: str) -> None:
    """Written last, after every rank's files are on disk: from now on the checkpoint may be loaded."""
    atomic_write_text(os.path.join(folder, MARKER), "ok\n")
