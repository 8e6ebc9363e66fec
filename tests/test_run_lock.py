"""One run per save folder (internlm/checkpoint/run_lock.py): a second run stops at start naming the holder while the
first finishes intact; a lock whose holder is gone (a dead process here, this slurm job before its requeue, a job
slurm no longer knows, a garbled file) is taken over with a notice; a live one never is."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess

import pytest
from rank_helpers import metric_steps, output, start_ranks, wait_for_step, wait_ranks
from train_helpers import tiny_overrides

from internlm.checkpoint.layout import complete_steps
from internlm.checkpoint.run_lock import LOCK_FILE, FolderInUseError, RunLock, this_run


def write_lock(folder, **fields) -> dict:
    os.makedirs(folder, exist_ok=True)
    record = dict(this_run(), **fields)
    with open(os.path.join(folder, LOCK_FILE), "w") as f:
        json.dump(record, f)
    return record


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.mark.slow
def test_a_second_run_stops_at_start_naming_the_first_which_finishes_intact(tmp_path):
    folder = tmp_path / "run"
    first_opts = tiny_overrides(folder, steps=30, micro_num=2, accum=1, **{"ckpt.checkpoint_every": 10,
                                                                            "data.num_workers": 1})
    go = tmp_path / "go"
    first = start_ranks(tmp_path / "first", 1, first_opts, fault=f"pause:2:{go}")  # waits in its third step
    try:
        wait_for_step(folder, first, 2)
        second_opts = dict(first_opts, **{"adam.lr": 5e-3})
        second = start_ranks(tmp_path / "second", 1, list(second_opts.items()))
        assert wait_ranks(second, 120) == [1]
        go.write_text("")
        assert wait_ranks(first, 180) == [0]
    finally:
        wait_ranks(first, 1)
    message = [line for line in output(tmp_path / "second", 0).splitlines() if line.startswith("train.py stopped")]
    assert len(message) == 1 and message[0].startswith(
        f"train.py stopped before training: ckpt.save_ckpt_folder {folder} is in use by another run: pid "
        f"{first[0].pid} on host {socket.gethostname()}, started "), message
    assert metric_steps(folder) == list(range(1, 31)) and complete_steps(str(folder)) == [10, 20, 30]
    assert json.load(open(folder / "30" / "config.json"))["adam"]["lr"] == 5e-4
    assert not (folder / LOCK_FILE).exists()  # released at the end


@pytest.mark.slow
def test_a_lock_left_by_a_dead_process_is_taken_over_with_a_notice(tmp_path):
    folder = tmp_path / "run"
    holder = write_lock(folder, pid=dead_pid(), slurm_job_id=None)
    procs = start_ranks(tmp_path / "out", 1, tiny_overrides(folder, steps=1, micro_num=2, accum=1))
    assert wait_ranks(procs, 120) == [0], output(tmp_path / "out", 0)
    log = (folder / "logs" / "rank0.log").read_text()
    assert (f"took over the lock {folder}/{LOCK_FILE} of pid {holder['pid']} on host {holder['host']}" in log
            and f"process {holder['pid']} no longer runs on {holder['host']}" in log), log
    assert complete_steps(str(folder)) == [1] and not (folder / LOCK_FILE).exists()


@pytest.mark.parametrize("case, holder, reason", [
    ("this slurm job before its requeue", {"slurm_job_id": "4242", "pid": os.getpid()},
     "it is this slurm job (4242) before it was requeued"),
    ("the holder's pid now belongs to another process", {"pid_start": "1", "slurm_job_id": None},
     "is another process now"),
    ("a garbled lock file", None, "the lock file is unreadable"),
])
def test_stale_locks_are_taken_over(tmp_path, monkeypatch, case, holder, reason):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    if holder is None:
        (tmp_path / LOCK_FILE).write_text('{"host": "vm", "pi')
    else:
        write_lock(tmp_path, **holder)
    lock = RunLock(str(tmp_path))
    notice = lock.acquire()
    assert notice is not None and reason in notice, notice
    assert json.load(open(tmp_path / LOCK_FILE))["token"] == lock.record["token"]
    lock.release()
    assert not (tmp_path / LOCK_FILE).exists()


@pytest.mark.skipif(shutil.which("scontrol") is None, reason="no slurm here to ask about the holder's job")
def test_the_lock_of_a_job_slurm_no_longer_runs_is_taken_over(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    write_lock(tmp_path, host="another-node", pid=1, slurm_job_id="999999999")
    notice = RunLock(str(tmp_path)).acquire()
    assert notice is not None and "slurm no longer knows job 999999999" in notice, notice


@pytest.mark.parametrize("case, holder", [
    ("a live process on this host", {}),
    ("a process on another host, no slurm job", {"host": "another-node", "pid": 12345}),
])
def test_a_live_holder_keeps_the_folder(tmp_path, monkeypatch, case, holder):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    record = write_lock(tmp_path, slurm_job_id=None, **holder)
    with pytest.raises(FolderInUseError) as error:
        RunLock(str(tmp_path)).acquire()
    message = str(error.value)
    assert f"is in use by another run: pid {record['pid']} on host {record['host']}" in message
    assert f"(if that run is dead, delete {tmp_path}/{LOCK_FILE})" in message
    assert json.load(open(tmp_path / LOCK_FILE))["token"] == record["token"]  # untouched


def test_a_lock_taken_meanwhile_by_another_run_is_not_stolen(tmp_path, monkeypatch):
    """Between reading a stale lock and moving it aside, another run may have taken the folder: its lock stays."""
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    stale = write_lock(tmp_path, pid=dead_pid(), slurm_job_id=None)
    newer = RunLock(str(tmp_path))
    os.remove(tmp_path / LOCK_FILE)
    newer.acquire()
    late = RunLock(str(tmp_path))
    assert late._take_over(stale) is False
    assert json.load(open(tmp_path / LOCK_FILE))["token"] == newer.record["token"]
    with pytest.raises(FolderInUseError):
        late.acquire()
