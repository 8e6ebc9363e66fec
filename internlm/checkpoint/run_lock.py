"""One run per save folder.

``{save_ckpt_folder}/RUN_LOCK`` names the run that holds the folder (host, pid, slurm job id, start time, command).
It is taken before anything else is written there and removed when the run ends. Two runs in one folder would
delete each other's in-progress checkpoints as "interrupted", interleave metrics.jsonl and mix two configs in one
series of steps: a second run stops at start with a message naming the holder. A lock whose holder is gone is
taken over with a notice: a process that no longer runs on this host, a slurm job that slurm no longer runs, or the
same slurm job id as ours (a requeued job: slurm has ended its previous incarnation).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from typing import Optional

LOCK_FILE = "RUN_LOCK"
# slurm job states in which the job still runs or will run again (squeue / scontrol show job)
LIVE_SLURM_STATES = ("PENDING", "RUNNING", "SUSPENDED", "COMPLETING", "CONFIGURING", "REQUEUED", "REQUEUE_FED",
                     "REQUEUE_HOLD", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD")


class FolderInUseError(RuntimeError):
    """Another live run holds the save folder; the message names it."""


def _process_start(pid: int) -> Optional[str]:
    """The start time of process ``pid`` in clock ticks since boot (/proc), or None: with the pid, it tells a
    process from a later one that got the same pid."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def this_run() -> dict:
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "pid_start": _process_start(pid),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"), "start_time": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]) if sys.argv else "",
            "token": uuid.uuid4().hex}


def describe_holder(h: dict) -> str:
    job = f", slurm job {h['slurm_job_id']}" if h.get("slurm_job_id") else ""
    return (f"pid {h.get('pid')} on host {h.get('host')}{job}, started {h.get('start_time')}, "
            f"command '{h.get('command', '')}'")


def _slurm_job_state(job_id: str) -> Optional[str]:
    """The job's state as slurm reports it, "" when slurm no longer knows the job, None when slurm cannot be
    asked (no scontrol here)."""
    try:
        out = subprocess.run(["scontrol", "show", "job", str(job_id)], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return "" if "Invalid job id" in out.stderr else None
    for word in out.stdout.split():
        if word.startswith("JobState="):
            return word.split("=", 1)[1]
    return None


def stale_reason(holder: Optional[dict], ours: dict) -> Optional[str]:
    """Why the lock of ``holder`` may be taken over by ``ours``, or None when its run may still be alive."""
    if holder is None:
        return "the lock file is unreadable (a run that died while writing it)"
    job = holder.get("slurm_job_id")
    if job and job == ours.get("slurm_job_id"):
        return f"it is this slurm job ({job}) before it was requeued"
    if holder.get("host") == ours["host"]:
        pid = holder.get("pid")
        start = _process_start(pid) if isinstance(pid, int) else None
        if start is None:
            return f"process {pid} no longer runs on {ours['host']}"
        if holder.get("pid_start") and start != holder["pid_start"]:
            return f"process {pid} on {ours['host']} is another process now (the holder ended)"
        return None
    if job:
        state = _slurm_job_state(job)
        if state == "":
            return f"slurm no longer knows job {job}"
        if state and state not in LIVE_SLURM_STATES:
            return f"slurm job {job} has ended ({state})"
    return None


def _read(path: str) -> Optional[dict]:
    try:
        with open(path) as f:
            record = json.load(f)
        return record if isinstance(record, dict) else None
    except (OSError, ValueError):
        return None


class RunLock:
    """The lock of one save folder, held by this process (rank 0 of a run)."""

    def __init__(self, folder: str):
        self.folder = folder
        self.path = os.path.join(folder, LOCK_FILE)
        self.record = this_run()
        self.held = False
        self.notice: Optional[str] = None  # set by acquire when it took over a stale lock

    def acquire(self) -> Optional[str]:
        """Take the lock; returns a notice when a stale lock was taken over. Raises FolderInUseError naming the
        holder when a live run has it."""
        os.makedirs(self.folder, exist_ok=True)
        notice = None
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = _read(self.path)
                if holder is None and not os.path.exists(self.path):
                    continue  # released meanwhile
                why = stale_reason(holder, self.record)
                if why is None:
                    raise FolderInUseError(
                        f"ckpt.save_ckpt_folder {self.folder} is in use by another run: {describe_holder(holder)}. "
                        f"Two runs in one folder overwrite each other's checkpoints and metrics: wait for it to end, "
                        f"stop it, or use another ckpt.save_ckpt_folder (if that run is dead, delete {self.path})"
                    ) from None
                if self._take_over(holder):
                    notice = f"took over the lock {self.path} of {describe_holder(holder or {})}: {why}"
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(self.record, f, indent=1)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            self.held = True
            self.notice = notice
            return notice
        raise FolderInUseError(f"could not take the lock {self.path}: other runs are taking it at the same time")

    def _take_over(self, seen: Optional[dict]) -> bool:
        """Move the stale lock aside; False when it changed meanwhile (another run took it: try again)."""
        aside = f"{self.path}.stale-{self.record['token']}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return False
        if _read(aside) != seen:  # a new lock slipped in between our read and the rename: put it back
            with contextlib.suppress(FileExistsError):
                os.link(aside, self.path)
            os.unlink(aside)
            return False
        os.unlink(aside)
        return True

    def release(self) -> None:
        """Remove the lock if it is still ours."""
        if self.held and (_read(self.path) or {}).get("token") == self.record["token"]:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        self.held = False
