"""Data-parallel training with real processes on gloo: DDP, ZeRO-1 and FSDP2 against one process with the whole
batch; resuming on another number of ranks; a dead rank; the slurm launcher."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
from train_helpers import saved_optimizer_chunks, tiny_overrides

from internlm.initialize.launch import LaunchError, detect_environment

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs/demo/stage2_joint_tiny.py")
MODES = {"ddp": 1, "zero1": -1, "fsdp": {"size": -1, "fsdp": True}}
TOTAL = 6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(folder, world: int, global_batch: int = 8, mode="ddp", stop_after=None, extra=None,
           own_process_group=False, local_world_size=None) -> list:
    """Start ``world`` ranks of train.py (torchrun's variables set by hand, as a launcher would). With
    ``own_process_group`` the ranks (and so their loader workers) form a new process group, as under slurm;
    ``local_world_size``: ranks per node as torchrun reports it (default: all on one node)."""
    opts = dict(tiny_overrides(folder, steps=TOTAL, micro_num=global_batch // world, accum=1))
    opts.update({"parallel.zero1": MODES[mode], "monitor.record_sample_ids": True, "ckpt.checkpoint_every": 3})
    opts.update(extra or {})
    args = [sys.executable, os.path.join(REPO, "train.py"), "--config", CONFIG, "--launcher", "torch",
            "--device", "cpu"]
    for k, v in opts.items():
        args += ["--opt", f"{k}={v!r}"]
    if stop_after is not None:
        args += ["--stop_after", str(stop_after)]
    port = free_port()
    procs = []
    os.makedirs(folder, exist_ok=True)
    for rank in range(world):
        local = local_world_size or world
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank % local),
                   LOCAL_WORLD_SIZE=str(local),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), PYTHONUNBUFFERED="1")
        log = open(os.path.join(folder, f"launch_rank{rank}.log"), "a")
        group = {}
        if own_process_group:
            group = {"preexec_fn": functools.partial(os.setpgid, 0, procs[0].pid if procs else 0)}
        procs.append(subprocess.Popen(args, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, **group))
    return procs


def wait(procs, timeout=240) -> list[int]:
    deadline = time.time() + timeout
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(timeout=max(deadline - time.time(), 1)))
        except subprocess.TimeoutExpired:
            p.kill()
            codes.append(-9)
    return codes


def run(folder, world, **kw):
    check_exit_codes(folder, wait(launch(folder, world, **kw)))


def check_exit_codes(folder, codes: list[int]) -> None:
    if any(codes):
        logs = "".join(open(os.path.join(folder, f"launch_rank{r}.log")).read()[-3000:] for r in range(len(codes)))
        raise AssertionError(f"ranks exited with {codes}:\n{logs}")


def metrics(folder) -> dict[int, dict]:
    with open(os.path.join(folder, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return {r["step"]: r for r in rows}


def samples_seen(folder, world) -> list[int]:
    ids = []
    for rank in range(world):
        path = os.path.join(folder, f"samples_rank{rank}.jsonl")
        if os.path.isfile(path):
            with open(path) as f:
                ids += [i for line in f if line.strip() for i in json.loads(line)["sample_ids"]]
    return sorted(ids)


def assert_same_losses(a: dict, b: dict, steps, tol=1e-5):
    for s in steps:
        for key in ("loss", "loss_rep", "loss_pred", "loss_act", "grad_norm"):
            x, y = a[s][key], b[s][key]
            assert abs(x - y) <= tol * max(1.0, abs(x)), (s, key, x, y)


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory):
    """The reference: one process, the whole batch of 8, six steps."""
    folder = str(tmp_path_factory.mktemp("one_rank"))
    run(folder, 1)
    return folder


@pytest.mark.parametrize("mode", ["ddp", "zero1", "fsdp"])
def test_two_ranks_equal_one_rank(tmp_path, one_rank, mode):
    folder = str(tmp_path / mode)
    run(folder, 2, mode=mode, stop_after=3)
    assert_same_losses(metrics(one_rank), metrics(folder), range(1, 4))


@pytest.mark.parametrize("mode", ["ddp", "zero1"])
def test_two_ranks_with_fused_gradient_accumulation_equal_one_rank(tmp_path, one_rank, mode):
    """parallel.grad_accumulation_fusion on 2 ranks: the blocks' weight gradients, reduced by the fusion's own
    buckets during the backward (DDP reduces the other parameters), give one process's losses."""
    folder = str(tmp_path / mode)
    run(folder, 2, mode=mode, stop_after=3, extra={"parallel.grad_accumulation_fusion": True})
    assert "gradient accumulation fusion: 14 block weights" in open(os.path.join(folder, "logs", "rank0.log")).read()
    assert_same_losses(metrics(one_rank), metrics(folder), range(1, 4))


@pytest.mark.parametrize("first, second", [((2, "fsdp"), (1, "ddp")), ((1, "ddp"), (2, "zero1"))])
def test_resume_on_another_world_size(tmp_path, one_rank, first, second):
    """Save on N ranks (one parallel mode), resume on M (another): the losses continue as in the uninterrupted
    run and, over the whole run, exactly the same samples are seen."""
    folder = str(tmp_path / "run")
    run(folder, first[0], mode=first[1], stop_after=3)
    assert os.path.isfile(os.path.join(folder, "3", "COMPLETE"))
    chunks = saved_optimizer_chunks(os.path.join(folder, "3"))
    sharded = sum(len(c) == 2 for c in chunks.values())  # FSDP2 on 2 ranks stores each rank's rows as a chunk
    assert (sharded > len(chunks) // 2) if first[1] == "fsdp" else sharded == 0, (sharded, len(chunks))
    run(folder, second[0], mode=second[1])
    reference, resumed = metrics(one_rank), metrics(folder)
    assert sorted(resumed) == list(range(1, TOTAL + 1))
    assert_same_losses(reference, resumed, range(1, TOTAL + 1))
    assert samples_seen(folder, 2) == samples_seen(one_rank, 1)
    assert len(samples_seen(folder, 2)) == TOTAL * 8
    log = open(os.path.join(folder, "logs", "rank0.log")).read()
    assert "data.micro_num: " in log and "global batch" not in log  # listed, and the same experiment


def test_dead_rank_fails_the_job_and_relaunch_resumes(tmp_path):
    folder = str(tmp_path / "run")
    extra = {"parallel.timeout_s": 20.0, "ckpt.checkpoint_every": 2, "data.total_steps": 10000,
             "lr_scheduler.total_steps": 10000}
    procs = launch(folder, 2, extra=extra)
    deadline = time.time() + 180
    while not os.path.isfile(os.path.join(folder, "2", "COMPLETE")):
        assert time.time() < deadline and procs[0].poll() is None, "no checkpoint at step 2"
        time.sleep(0.2)
    procs[1].send_signal(signal.SIGKILL)
    killed_at = time.time()
    code = wait(procs[:1], timeout=120)[0]
    assert code != 0 and time.time() - killed_at < 20 + 30  # within the configured timeout (plus start-up slack)
    run(folder, 2, stop_after=1, extra=extra)
    rows = metrics(folder)
    last_complete = max(int(d) for d in os.listdir(folder) if d.isdigit()
                        and os.path.isfile(os.path.join(folder, d, "COMPLETE")))
    assert last_complete >= 2 and max(rows) == last_complete + 1  # one step past the checkpoint it resumed from
    log = open(os.path.join(folder, "logs", "rank0.log")).read()
    assert "resumed from" in log


def test_preemption_signal_saves_and_stops(tmp_path):
    folder = str(tmp_path / "run")
    extra = {"data.total_steps": 10000, "lr_scheduler.total_steps": 10000, "ckpt.checkpoint_every": 10000}
    procs = launch(folder, 2, extra=extra)
    deadline = time.time() + 180
    while not (os.path.isfile(os.path.join(folder, "metrics.jsonl")) and len(metrics(folder)) >= 2):
        assert time.time() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.2)
    procs[0].send_signal(signal.SIGTERM)  # slurm signals every task; one is enough to stop all of them together
    assert wait(procs, timeout=120) == [0, 0]
    steps = [int(d) for d in os.listdir(folder) if d.isdigit() and os.path.isfile(os.path.join(folder, d, "COMPLETE"))]
    assert len(steps) == 1 and steps[0] == max(metrics(folder))


def complete_steps_of(folder) -> list[int]:
    return sorted(int(d) for d in os.listdir(folder)
                  if d.isdigit() and os.path.isfile(os.path.join(folder, d, "COMPLETE")))


def wait_for_steps(folder, procs, steps: int, timeout=180) -> None:
    deadline = time.time() + timeout
    while not (os.path.isfile(os.path.join(folder, "metrics.jsonl")) and len(metrics(folder)) >= steps):
        if time.time() > deadline or any(p.poll() is not None for p in procs):
            check_exit_codes(folder, wait(procs, timeout=1))
            raise AssertionError(f"fewer than {steps} steps after {timeout}s")
        time.sleep(0.2)


def child_pids(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(c) for c in f.read().split()]


@pytest.mark.parametrize("world, sig", [(1, signal.SIGUSR1), (2, signal.SIGTERM)])
def test_preemption_signal_to_the_process_group_with_loader_workers(tmp_path, world, sig):
    """slurm and torchrun signal the whole process group, DataLoader workers included: the workers must survive it
    and every rank save at the next step and exit 0."""
    folder = str(tmp_path / "run")
    extra = {"data.total_steps": 10000, "lr_scheduler.total_steps": 10000, "ckpt.checkpoint_every": 10000,
             "data.num_workers": 2}
    procs = launch(folder, world, extra=extra, own_process_group=True)
    try:
        wait_for_steps(folder, procs, 2)
        workers = [c for p in procs for c in child_pids(p.pid)]
        assert len(workers) >= 2 * world and all(os.getpgid(w) == procs[0].pid for w in workers)
        os.killpg(procs[0].pid, sig)
        check_exit_codes(folder, wait(procs, timeout=120))
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(procs[0].pid, signal.SIGKILL)  # whatever is left of a failed run
    assert complete_steps_of(folder) == [max(metrics(folder))]
    assert "pre-emption signal: saving step" in open(os.path.join(folder, "logs", "rank0.log")).read()


def test_async_checkpoint_on_two_ranks(tmp_path, one_rank):
    """The background save of the sharded state must not meet the training's collectives on one process group:
    2 ranks train past an async checkpoint, and a relaunch resumes from it exactly."""
    folder = str(tmp_path / "run")
    extra = {"ckpt.async_save": True, "ckpt.checkpoint_every": 2, "parallel.timeout_s": 30.0}
    run(folder, 2, stop_after=3, extra=extra)  # step 3 runs while step 2's optimizer state is being written
    assert complete_steps_of(folder) == [2]
    run(folder, 2, extra=extra)
    assert complete_steps_of(folder) == [2, 4, 6]
    assert_same_losses(metrics(one_rank), metrics(folder), range(1, TOTAL + 1))


@pytest.fixture(scope="module")
def two_rank_checkpoints(tmp_path_factory):
    """Complete checkpoints at steps 1 and 2, saved by 2 ranks of 4 samples each."""
    folder = str(tmp_path_factory.mktemp("two_rank_checkpoints"))
    run(folder, 2, stop_after=2, extra={"ckpt.checkpoint_every": 1})
    assert complete_steps_of(folder) == [1, 2]
    return folder


def test_file_of_one_rank_corrupt_all_ranks_fall_back_together(tmp_path, two_rank_checkpoints):
    """Only rank 1 reads rng/rank1.pt: both ranks must still agree to resume from the previous checkpoint."""
    folder = str(tmp_path / "run")
    shutil.copytree(two_rank_checkpoints, folder)
    with open(os.path.join(folder, "2", "rng", "rank1.pt"), "r+b") as f:
        f.truncate(100)
    run(folder, 2, stop_after=1, extra={"ckpt.checkpoint_every": 1})
    assert complete_steps_of(folder) == [1, 2] and os.path.isdir(os.path.join(folder, "2.corrupt"))
    log = open(os.path.join(folder, "logs", "rank0.log")).read()
    assert f"{folder}/2/rng/rank1.pt cannot be read" in log and "resumed from " + os.path.join(folder, "1") in log


def test_resume_on_another_world_size_without_adjusting_micro_num_stops_unless_allowed(tmp_path,
                                                                                    two_rank_checkpoints):
    """data.micro_num=4 as on each of the 2 ranks, on 1 rank: the global batch 8 -> 4 is another experiment."""
    folder = str(tmp_path / "run")
    shutil.copytree(two_rank_checkpoints, folder)
    assert wait(launch(folder, 1, global_batch=4, stop_after=1)) == [1]
    expected = ("* global batch (data.micro_num x ranks): 8 -> 4 (saved with data.micro_num=4 on 2 ranks, now 4 x 1; "
                "to keep 8, relaunch with --opt data.micro_num=8)")
    assert expected in open(os.path.join(folder, "launch_rank0.log")).read()
    assert complete_steps_of(folder) == [1, 2]
    run(folder, 1, global_batch=4, stop_after=1, extra={"ckpt.allow_config_change": True})
    assert expected in open(os.path.join(folder, "logs", "rank0.log")).read()
    with open(os.path.join(folder, "3", "meta.json")) as f:
        changes = json.load(f)["config_changes"][0]["changes"]
    assert {"key": "global batch (data.micro_num x ranks)", "old": 8, "new": 4, "experiment": True} in changes


SLURM = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_JOB_NODELIST": "gpu-[03-06]"}


def test_slurm_launcher_reads_the_slurm_variables():
    hosts = {"gpu-[03-06]": "gpu-03"}
    env = detect_environment("slurm", 12345, env=SLURM, first_host=hosts.__getitem__)
    assert (env.rank, env.world_size, env.local_rank, env.master_addr, env.master_port) == (5, 8, 1, "gpu-03", 12345)
    old = {k: v for k, v in SLURM.items() if k != "SLURM_NTASKS"} | {"SLURM_NPROCS": "8"}
    assert detect_environment("slurm", None, env=old, first_host=hosts.__getitem__).world_size == 8
    with pytest.raises(LaunchError, match="SLURM_LOCALID"):
        detect_environment("slurm", 1, env={k: v for k, v in SLURM.items() if k != "SLURM_LOCALID"},
                           first_host=hosts.__getitem__)
    with pytest.raises(LaunchError, match="rank 9 is outside world size 8"):
        detect_environment("slurm", 1, env=dict(SLURM, SLURM_PROCID="9"), first_host=hosts.__getitem__)


def test_torch_launcher_and_single_process():
    env = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "2222"}
    e = detect_environment("torch", None, env=env)
    assert (e.rank, e.world_size, e.master_addr, e.master_port) == (1, 2, "10.0.0.1", 2222)
    assert detect_environment(None, None, env=env).launcher == "torch"  # torchrun without --launcher
    with pytest.raises(LaunchError, match="MASTER_ADDR, MASTER_PORT not set"):
        detect_environment("torch", None, env={"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    single = detect_environment(None, None, env={})
    assert (single.launcher, single.rank, single.world_size) == ("single", 0, 1)
