"""The slurm launch scripts against a real slurm: ``tools/slurm_test_cluster.sh start`` (slurmctld and slurmd on this
host, what .ci/run starts). Jobs are submitted from the repository root exactly as the README shows, on a CPU-only
node (2 tasks on gloo, ``--gpus-per-task=0``), and judged by what slurm itself reports (``scontrol show job``: state,
exit code, restarts), the job's log and the checkpoints. Skipped, with the reason, where no slurm answers.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import subprocess
import sys
import time

import pytest
from eval_helpers import free_port
from train_helpers import tiny_overrides

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGE1 = "scripts_train/source_slurm_train_stage1_contrastive_w_tokenizer.sh"
STAGE2 = "scripts_train/slurm_train_stage2_contrastive_joint.sh"
CPU_NODE = ["-N", "1", "--ntasks-per-node=2", "--cpus-per-task=1", "--gpus-per-task=0"]
ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE")
UNAVAILABLE_NOTE = os.environ.get("EGOAGENT_SLURM_STATE", "/tmp/egoagent-slurm") + "/unavailable"


def _why_no_slurm() -> str | None:
    if not shutil.which("sbatch"):
        note = open(UNAVAILABLE_NOTE).read().strip() if os.path.isfile(UNAVAILABLE_NOTE) else "not installed"
        return f"no slurm here ({note}); start one with: bash tools/slurm_test_cluster.sh start (as root)"
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=30)
        nodes = subprocess.run(["sinfo", "-h", "-o", "%T %c"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return f"slurm does not answer ({exc})"
    if "is UP" not in ping.stdout:
        said = ((ping.stdout + ping.stderr).strip().splitlines() or ["no answer"])[0]
        return f"slurmctld is not up ({said}): bash tools/slurm_test_cluster.sh start"
    if not any(s.split()[0].rstrip("*~#") in ("idle", "mixed", "allocated") and int(s.split()[1]) >= 2
               for s in nodes.splitlines() if len(s.split()) == 2):
        return f"no slurm node with 2 CPUs is up (sinfo: {nodes.strip() or 'nothing'})"
    return None


WHY_NO_SLURM = _why_no_slurm()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(WHY_NO_SLURM is not None, reason=str(WHY_NO_SLURM))]


def job_env() -> dict:
    """The submitting shell's environment, as a user's with the venv activated (jobs inherit it)."""
    return dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
                OMP_NUM_THREADS="1")


def opts(folder, **extra) -> list[str]:
    out = []
    for k, v in tiny_overrides(folder, **extra):
        out += ["--opt", f"{k}={v!r}"]
    return out


def sbatch(args: list, cwd=REPO, env=None) -> str:
    proc = subprocess.run(["sbatch", "--parsable", *args], cwd=cwd, env=env or job_env(), capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().split(";")[0]


def job_info(job: str) -> dict:
    out = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, timeout=60).stdout
    return dict(w.split("=", 1) for w in out.split() if "=" in w)


def wait_for(job: str, timeout: float = 300) -> dict:
    """The job's record once slurm reports it ended (a requeued job is waited for through its restarts)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        info = job_info(job)
        if info.get("JobState") in ENDED:
            return info
        time.sleep(1)
    subprocess.run(["scancel", job], timeout=60)
    raise AssertionError(f"job {job} did not end within {timeout} s: {job_info(job)}\n{read_log(job)}")


def log_path(job: str, cwd=REPO) -> str:
    found = glob.glob(os.path.join(cwd, f"slurm-*-{job}.out"))
    return found[0] if found else os.path.join(cwd, f"slurm-?-{job}.out")


def read_log(job: str, cwd=REPO) -> str:
    path = log_path(job, cwd)
    return open(path).read() if os.path.isfile(path) else f"(no log {path})"


@contextlib.contextmanager
def jobs_cleaned_up(cwd=REPO):
    """Cancel what a failed test left running; remove the logs it wrote into the repository."""
    before = set(glob.glob(os.path.join(cwd, "slurm-*.out")))
    submitted: list[str] = []
    try:
        yield submitted
    finally:
        for job in submitted:
            if job_info(job).get("JobState") not in ENDED:
                subprocess.run(["scancel", job], timeout=60)
        for path in set(glob.glob(os.path.join(cwd, "slurm-*.out"))) - before:
            if any(path.endswith(f"-{job}.out") for job in submitted):
                os.remove(path)


def complete_steps(folder) -> list[int]:
    return sorted(int(d) for d in os.listdir(folder) if d.isdigit() and os.path.isfile(os.path.join(folder, d,
                                                                                                     "COMPLETE")))


def assert_completed(info: dict, job: str, restarts: int = 0) -> None:
    assert (info["JobState"], info["ExitCode"], info["Restarts"]) == ("COMPLETED", "0:0", str(restarts)), \
        f"{info}\n{read_log(job)}"


def test_sbatch_stage1_then_stage2_from_its_checkpoint_then_an_srun_eval(tmp_path, processed_world):
    """The README's commands: sbatch stage 1 (2 tasks, gloo, a loader worker each), sbatch stage 2 from its
    checkpoint on the synthetic world's clips, then the motion eval as an srun job step on 2 tasks."""
    s1, s2 = tmp_path / "stage1", tmp_path / "stage2"
    world = {"frames": processed_world.frames_root, "poses": processed_world.pose_root, "walks": []}
    with jobs_cleaned_up() as submitted:
        submitted.append(job := sbatch([*CPU_NODE, STAGE1, "1", "configs/demo/stage1_dino_tiny.py", "2",
                                        *opts(s1, steps=4, micro_num=2, accum=1, **{"data.num_workers": 1,
                                                                                    "ckpt.checkpoint_every": 2})]))
        info = wait_for(job)
        assert_completed(info, job)
        log = read_log(job)
        assert info["StdOut"] == os.path.join(REPO, f"slurm-egoagent-stage1-{job}.out")
        assert "stage 1, 2 process(es) on cpu" in log and f"checkpoint {s1}/4 written" in log, log
        assert complete_steps(s1) == [2, 4] and json.load(open(s1 / "4" / "meta.json"))["world_size"] == 2

        init = {"ckpt.load_ckpt_info": dict(path=str(s1), content=("model",)), "data.num_workers": 1,
                "data.calibration_takes": 0}
        submitted.append(job := sbatch([*CPU_NODE, STAGE2, "configs/demo/stage2_joint_tiny.py", "2", "3",
                                        *opts(s2, steps=2, micro_num=2, accum=1, data_root=world, **init)]))
        info = wait_for(job)
        assert_completed(info, job)
        meta = json.load(open(s2 / "2" / "meta.json"))
        assert complete_steps(s2) == [2] and (meta["stage"], meta["world_size"]) == (2, 2), read_log(job)
        assert json.load(open(s2 / "2" / "config.json"))["data"]["seed"] == 3  # the SEED argument

        out = tmp_path / "eval"
        eval_opts = opts(s2, data_root=world)
        proc = subprocess.run(
            ["srun", "-N", "1", "-n", "2", "--cpus-per-task=1", "--gpus-per-task=0", "--kill-on-bad-exit=1",
             "python", "-u", "eval_3dposes.py", "--config", "configs/demo/stage2_joint_tiny.py", "--launcher", "slurm",
             "--port", str(free_port()), "--eval_iters", "1", "--batch_size", "2", "--num_workers", "1",
             "--ckpt_folder", str(s2), "--output_dir", str(out), *eval_opts],
            cwd=REPO, env=job_env(), capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        motion = json.load(open(out / "motion.json"))
        assert motion["world_size"] == 2 and motion["step"] == 2 and motion["num_clips"] == 4
        assert motion["model"]["mpjpe_30fps"] > 0


def test_usr1_saves_requeues_the_job_which_resumes_and_finishes(tmp_path):
    """What --signal=USR1@180 does before a pre-emption, sent as scancel --signal=USR1: both ranks save at the next
    step (their loader workers survive the signal), rank 0 requeues the job, and slurm's restart of it resumes from
    that checkpoint and trains to the end. One job, one log, every step's metrics exactly once."""
    folder = tmp_path / "run"
    with jobs_cleaned_up() as submitted:
        submitted.append(job := sbatch([*CPU_NODE, STAGE1, "1", "configs/demo/stage1_dino_tiny.py", "2",
                                        *opts(folder, steps=60, micro_num=2, accum=1,
                                              **{"data.num_workers": 1, "monitor.log_every": 20})]))
        metrics = folder / "metrics.jsonl"
        deadline = time.time() + 300
        while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 2):
            assert time.time() < deadline and job_info(job).get("JobState") not in ENDED, read_log(job)
            time.sleep(0.1)
        subprocess.run(["scancel", "--signal=USR1", job], check=True, timeout=60)
        info = wait_for(job)
        assert_completed(info, job, restarts=1)
        log = read_log(job)
    saved = [int(line.rsplit("saving step ", 1)[1].split()[0]) for line in log.splitlines()
             if "pre-emption signal: saving step" in line]
    assert len(saved) == 2 and saved[0] == saved[1] < 60, log  # both ranks, the same step
    assert f"slurm job {job} requeued" in log and f"job {job} (restart 1)" in log, log
    assert f"resumed from {folder}/{saved[0]} at step {saved[0]}" in log, log
    assert complete_steps(folder) == [saved[0], 60]
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps == list(range(1, 61))
    assert not (folder / "RUN_LOCK").exists()


def test_a_failed_launch_leaves_a_log_and_a_failed_job(tmp_path):
    """Whatever fails at launch, slurm's log names it and the job ends FAILED at once: a config that does not
    exist, a job with other geometry than the command, sbatch from outside the repository (and there with
    EGOAGENT_ROOT), a save folder that cannot be written (train.py's own start-up check, on both ranks)."""
    with jobs_cleaned_up() as submitted:
        cases = [
            (REPO, None, [*CPU_NODE, STAGE1, "1", "configs/demo/no_such_config.py", "2"],
             "config not found: configs/demo/no_such_config.py"),
            (REPO, None, [*CPU_NODE, STAGE1, "1", "configs/demo/stage1_dino_tiny.py", "4"],
             "the command asks for 1 node(s) and 4 task(s), but the job has 1 node(s) and 2 task(s)"),
            (str(tmp_path), None, [*CPU_NODE, os.path.join(REPO, STAGE1), "1", "configs/demo/stage1_dino_tiny.py",
                                   "2"], f"no EgoAgent repository at {tmp_path}"),
            (str(tmp_path), {"EGOAGENT_ROOT": REPO}, [*CPU_NODE, os.path.join(REPO, STAGE2), "configs/none.py", "2"],
             "config not found: configs/none.py"),
            (REPO, None, [*CPU_NODE, STAGE1, "1", "configs/demo/stage1_dino_tiny.py", "2",
                          *opts(tmp_path / "a_file" / "run")], "is not writable: Not a directory"),
        ]
        (tmp_path / "a_file").write_text("not a folder")
        for cwd, env, args, _ in cases:
            submitted.append(job := sbatch(args, cwd=cwd, env=dict(job_env(), **(env or {}))))
        for job, (cwd, _, _, expected) in zip(submitted, cases):
            info = wait_for(job, timeout=180)
            log = read_log(job, cwd)
            assert info["JobState"] == "FAILED" and info["ExitCode"] != "0:0", f"{info}\n{log}"
            assert expected in log, log
        for path in glob.glob(os.path.join(tmp_path, "slurm-*.out")):
            os.remove(path)


def tiny_config_file(path, stage: int, folder, **extra) -> str:
    """A config file as a user writes one: the demo config of ``stage``, shrunk (tiny_overrides)."""
    sections: dict[str, dict] = {}
    for key, value in tiny_overrides(folder, steps=2, micro_num=2, accum=1, **extra):
        section, leaf = key.split(".", 1)
        sections.setdefault(section, {})[leaf] = value
    demo = os.path.join(REPO, "configs", "demo", ("stage1_dino_tiny.py", "stage2_joint_tiny.py")[stage - 1])
    lines = [f"exec(open({demo!r}).read())"]
    lines += [f"{name} = dict(globals().get({name!r}) or {{}}, **{values!r})" for name, values in sections.items()]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_the_sbatch_template_runs_both_stages_in_one_job(tmp_path):
    s1, s2 = tmp_path / "stage1", tmp_path / "stage2"
    stage1 = tiny_config_file(tmp_path / "stage1.py", 1, s1, **{"data.num_workers": 1})
    stage2 = tiny_config_file(tmp_path / "stage2.py", 2, s2, **{
        "data.num_workers": 1, "ckpt.load_ckpt_info": dict(path=str(s1), content=("model",))})
    with jobs_cleaned_up() as submitted:
        submitted.append(job := sbatch([*CPU_NODE, "scripts_train/sbatch_template.sh", stage1, stage2, "5"]))
        info = wait_for(job)
        assert_completed(info, job)
        log = read_log(job)
    assert log.count(f"job {job} (restart 0)") == 2 and f"initialised model from {s1}/2" in log, log
    assert complete_steps(s1) == [2] and complete_steps(s2) == [2]
    assert json.load(open(s2 / "2" / "config.json"))["data"]["seed"] == 5
