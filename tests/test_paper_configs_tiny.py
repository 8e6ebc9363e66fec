"""Each paper config trains on a CPU at model.flavor=tiny (docs/reproduction.md, "Any paper config on a laptop"):
stage 1 then stage 2 from it, as the authors' files chain them (save_ckpt/{JOB} of the working directory), with the
data paths and the run length given on the command line. What must follow does, with a notice each, and nothing is
written outside the runs' save folders.

The batch is made small here (``--opt data.micro_num=4``: its copy loss.batch_size follows too) to keep CI short:
one step of the paper batch (64 frames / 60 clips of 224-px crops) takes one to three minutes on 2 cores;
test_config_flavor.py checks that the command without it resolves on all four configs. The 1B pair runs here, the
300M pair in test_download_layout.py's end-to-end test (the README's data section, then this command)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAIRS = {"300m": ("configs/dino_pretrain/lr5e-4_tmp004_300m.py", "configs/joint_train/lr6e-04_tmp004_300m.py"),
         "1b": ("configs/dino_pretrain/lr5e-4_tmp004_1b.py", "configs/joint_train/lr6e-04_tmp004_1b.py")}
JOBS = {"300m": ("dino_lr5e-4_tmp004_300M", "joint_lr6e-04_tmp004_300M"),
        "1b": ("dino_lr5e-4_tmp004_1B", "joint_lr6e-04_tmp004_1B")}


def train(config: str, opts: list[str], cwd, env) -> str:
    args = [sys.executable, os.path.join(REPO, "train.py"), "--config", os.path.join(REPO, config),
            "--opt", "model.flavor=tiny", "--opt", "data.total_steps=1", "--opt", "data.micro_num=4"]
    for opt in opts:
        args += ["--opt", opt]
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("size", ["1b"])
def test_paper_config_pair_trains_tiny_on_a_cpu(size, processed_world, tmp_path):
    w = processed_world
    work, cache = tmp_path / "work", tmp_path / "cache"
    work.mkdir()
    env = dict(os.environ, EGOAGENT_CACHE_DIR=str(cache), PYTHONPATH=REPO)
    data = [f"data.egoexo_frames_folder={w.frames_root}", f"data.egoexo_pose_folder={w.pose_root}"]
    stage1, stage2 = PAIRS[size]
    log1 = train(stage1, data + [f"data.train_folder={[str(p) for p in w.wtour_videos]}"], work, env)
    log2 = train(stage2, data, work, env)  # loads save_ckpt/{stage-1 job}, as the file says
    job1, job2 = JOBS[size]
    for log in (log1, log2):
        assert "config: model.flavor='tiny' replaces the file's model.hidden_size=" in log
        assert "config: teacher follows model: flavor None -> 'tiny', hidden_size " in log
        assert "config: lr_scheduler.total_steps follows data.total_steps: " in log
        assert "config: loss.batch_size follows data.micro_num / data.gradient_accumulation: " in log
    assert "config: lr_scheduler.warmup_steps follows lr_scheduler.warmup_ratio / lr_scheduler.total_steps: " \
           "1800 -> 0, after --opt data.total_steps" in log2
    assert "config: model.attn_backend follows the device: 'flex' -> 'sdpa' on this CPU" in log2
    assert f"initialised model from save_ckpt/{job1}/1" in log2
    # the runs' folders, their teacher copies beside them (the files' save_ckpt/{JOB}_teacher), nothing else
    assert sorted(os.listdir(work)) == ["save_ckpt"]
    assert sorted(os.listdir(work / "save_ckpt")) == sorted([job1, f"{job1}_teacher", job2, f"{job2}_teacher"])
    for job in (job1, job2):
        assert os.path.exists(work / "save_ckpt" / job / "1" / "COMPLETE")
        assert os.listdir(work / "save_ckpt" / f"{job}_teacher" / "1") == ["teacher_tp0_pp0.pt"]
