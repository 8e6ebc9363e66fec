"""Start train.py ranks as a launcher does (torchrun's variables set by hand, the ranks and their loader workers in
one new process group, as under slurm), wait for them, and look at what is left of the group."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time

from eval_helpers import free_port

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = {1: "configs/demo/stage1_dino_tiny.py", 2: "configs/demo/stage2_joint_tiny.py"}


def start_ranks(outputs, world: int, opts, stage: int = 1, fault: str | None = None, args=(), env=None,
                port: int | None = None, ranks=None) -> list[subprocess.Popen]:
    """``world`` ranks of train.py (tests/fault_driver.py with ``fault``) with ``--opt`` pairs ``opts``; each
    rank's stdout and stderr go to ``{outputs}/rank{r}.out``. ``ranks``: start only these (a missing rank)."""
    script = os.path.join(REPO, "tests", "fault_driver.py") if fault else os.path.join(REPO, "train.py")
    cmd = [sys.executable, script, "--config", DEMO[stage], "--launcher", "torch", "--device", "cpu", *args]
    for k, v in opts:
        cmd += ["--opt", f"{k}={v!r}"]
    port = port or free_port()
    os.makedirs(outputs, exist_ok=True)
    procs: list[subprocess.Popen] = []
    for rank in (range(world) if ranks is None else ranks):
        rank_env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                        LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                        PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", **(env or {}))
        if fault:
            rank_env["EGOAGENT_FAULT"] = fault
        out = open(os.path.join(outputs, f"rank{rank}.out"), "w")
        group = functools.partial(os.setpgid, 0, procs[0].pid if procs else 0)
        procs.append(subprocess.Popen(cmd, env=rank_env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                      preexec_fn=group))
    return procs


def wait_ranks(procs, timeout: float) -> list[int | None]:
    """Exit codes; None for a rank still running after ``timeout`` s (then the whole group is killed)."""
    deadline = time.time() + timeout
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(timeout=max(deadline - time.time(), 0.1)))
        except subprocess.TimeoutExpired:
            codes.append(None)
    if None in codes:
        kill_group(procs)
    return codes


def kill_group(procs) -> None:
    try:
        os.killpg(procs[0].pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for p in procs:
        p.wait()


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(pid))
    return out


def wait_group_gone(pgid: int, timeout: float) -> list[int]:
    """The members of the group still alive after ``timeout`` s ([] as soon as it is empty)."""
    deadline = time.time() + timeout
    while (left := group_members(pgid)) and time.time() < deadline:
        time.sleep(0.1)
    return left


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(c) for c in f.read().split()]


def output(outputs, rank: int) -> str:
    with open(os.path.join(outputs, f"rank{rank}.out")) as f:
        return f.read()


def metric_steps(folder) -> list[int]:
    import json

    path = os.path.join(folder, "metrics.jsonl")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line)["step"] for line in f if line.strip()]


def wait_for_step(folder, procs, step: int, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while not metric_steps(folder) or metric_steps(folder)[-1] < step:
        if time.time() > deadline or any(p.poll() is not None for p in procs):
            codes = wait_ranks(procs, 1)
            raise AssertionError(f"step {step} not reached (exit codes {codes})")
        time.sleep(0.05)
