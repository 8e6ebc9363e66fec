"""Where a checkpoint lives and when it counts as complete.

    {save_ckpt_folder}/{step}/
        model_tp0_pp0.pt      student weights, one file, unsharded (what the eval tools and HF conversion read)
        teacher_tp0_pp0.pt    teacher weights, likewise
        config.json           the resolved config of the run
        meta.json             step, consumed samples, world size, git commit, stage, time, config_changes (the
                              resumes with a changed config, train/config_change.py)
        train_state/          optimizer, scaler, schedules, DINO centers, data position (torch.distributed.checkpoint,
                              so a run saved on N ranks resumes on M)
        rng/rank{r}.pt        RNG states of every rank
        COMPLETE              written last: a folder without it is an interrupted save and is never loaded
    {save_ckpt_folder}/RUN_LOCK   the run that holds the folder (run_lock.py), while it runs
    {save_ckpt_folder}/prediction_calibration.json
                              data.calibration_takes: the scale of the learned prediction change chosen after the
                              last step (the step it belongs to, the L_pred of every scale tried, the held-out takes)
"""

from __future__ import annotations

import json
import os
from typing import Optional

MARKER = "COMPLETE"
STUDENT_FILE = "model_tp0_pp0.pt"
TEACHER_FILE = "teacher_tp0_pp0.pt"
CONFIG_FILE = "config.json"
META_FILE = "meta.json"
TRAIN_STATE_DIR = "train_state"
RNG_DIR = "rng"
CALIBRATION_FILE = "prediction_calibration.json"
# meta.json: the share of the learned change the residual state prediction adds (train/prediction_base.py). Older
# checkpoints hold it as a buffer of this name in both weight files; the readers here take it out of them.
CHANGE_SCALE_KEY = "prediction_change_scale"


def step_folder(save_folder: str, step: int) -> str:
    return os.path.join(save_folder, str(step))


def is_complete(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, MARKER))


def _steps(save_folder: str, complete: bool) -> list[int]:
    if not os.path.isdir(save_folder):
        return []
    return sorted(int(name) for name in os.listdir(save_folder)
                  if name.isdigit() and is_complete(os.path.join(save_folder, name)) == complete)


def complete_steps(save_folder: str) -> list[int]:
    """Steps of the complete checkpoints in a run folder, ascending."""
    return _steps(save_folder, complete=True)


def incomplete_steps(save_folder: str) -> list[int]:
    """Step folders without the marker (interrupted saves), ascending."""
    return _steps(save_folder, complete=False)


def latest_checkpoint(save_folder: str) -> Optional[str]:
    """The newest complete checkpoint folder of a run, or None."""
    steps = complete_steps(save_folder)
    return step_folder(save_folder, steps[-1]) if steps else None


def resolve_checkpoint(path: str) -> str:
    """A step folder as is, or a run folder -> its newest complete step folder. Raises with the reason."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint path does not exist: {path}")
    if os.path.isfile(os.path.join(path, STUDENT_FILE)) or os.path.isfile(os.path.join(path, MARKER)):
        if not is_complete(path):
            raise FileNotFoundError(f"{path} is an interrupted save (no {MARKER} marker); use an earlier step")
        return path
    latest = latest_checkpoint(path)
    if latest is None:
        raise FileNotFoundError(f"no complete checkpoint (a numbered folder with a {MARKER} marker) under {path}")
    return latest


def read_meta(folder: str) -> dict:
    with open(os.path.join(folder, META_FILE)) as f:
        return json.load(f)
