"""Faults as a cluster produces them, on real train.py ranks (2 on gloo, one loader worker each, in a process group of
their own as under slurm): an exception in a step, a save onto a full disk, a folder that cannot be written, Ctrl-C.
Each must end every process of the run within seconds with one message naming the cause (a crash used to leave the
interpreter waiting forever for loader workers that ignore SIGTERM)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time

import pytest
import torch
from rank_helpers import (
    children,
    metric_steps,
    output,
    start_ranks,
    wait_for_step,
    wait_group_gone,
    wait_ranks,
)
from torch.distributed.checkpoint.api import CheckpointException
from train_helpers import tiny_config, tiny_overrides

from internlm.checkpoint.layout import complete_steps, resolve_checkpoint
from internlm.checkpoint.storage import DiskFullError, disk_full_error
from internlm.data.build import build_valid_loader
from internlm.data.workers import running_loader, stop_loader_workers
from internlm.initialize.crash import disk_full_in
from internlm.initialize.signals import STOP_SIGNALS

EXIT_WITHIN_S = 30  # measured: 1-3 s on 2 busy cores; a hang is forever
TRAINING = {"data.total_steps": 1000, "lr_scheduler.total_steps": 1000, "data.num_workers": 1}


def tiny(folder, **extra):
    return tiny_overrides(folder, steps=1000, micro_num=2, accum=1, **{**TRAINING, **extra})


@contextlib.contextmanager
def small_tmpfs(path, size: str, read_only: bool = False):
    """A tmpfs of ``size`` mounted at ``path`` (root only), or None where none can be mounted."""
    os.makedirs(path, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True,
                             timeout=30).returncode == 0 if os.geteuid() == 0 else False
    try:
        yield path if mounted else None
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], timeout=30)


def run_until_exit(tmp_path, folder, opts, fault=None, world=2, after_step=None, **kw):
    """Start the ranks; once ``after_step`` is in the metrics, time how long until every rank has exited. ->
    (exit codes, seconds, leftover processes of the group). With ``after_step`` every rank waits before its next
    step until the loader workers are counted (a tiny step would otherwise reach the fault before the count)."""
    release = tmp_path / "release"
    if after_step is not None:
        fault = ",".join(f for f in (fault, f"pause:{after_step}:{release}") if f)
    procs = start_ranks(tmp_path / "out", world, opts, fault=fault, **kw)
    try:
        if after_step is not None:
            wait_for_step(folder, procs, after_step)
            assert len([c for p in procs for c in children(p.pid)]) >= world  # the loader workers run
            release.touch()
        t0 = time.time()
        codes = wait_ranks(procs, 120)
        seconds = time.time() - t0
        return codes, seconds, wait_group_gone(procs[0].pid, 10)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(procs[0].pid, signal.SIGKILL)


def one_message(text: str, start: str) -> str:
    """The single line of ``text`` that starts with ``start`` (no traceback on the console)."""
    lines = [line for line in text.splitlines() if line.startswith(start)]
    assert len(lines) == 1 and "Traceback" not in text, text[-3000:]
    return lines[0]


@pytest.mark.slow
def test_exception_in_a_step_ends_every_rank_and_worker_within_seconds(tmp_path):
    folder = tmp_path / "run"
    codes, seconds, left = run_until_exit(tmp_path, folder, tiny(folder), fault="raise:2:1", after_step=1)
    assert codes == [1, 1] and left == [] and seconds < EXIT_WITHIN_S, (codes, seconds, left)
    line = one_message(output(tmp_path / "out", 1), "train.py stopped")
    assert line.startswith("train.py stopped at step 2 [rank 1]: ZeroDivisionError: planted failure in step 3 (at ")
    assert line.endswith(f"traceback in {folder}/logs/rank1.log")
    assert "ZeroDivisionError: planted failure" in (folder / "logs" / "rank1.log").read_text()
    rank0 = one_message(output(tmp_path / "out", 0), "train.py stopped")
    assert "lost contact with another rank" in rank0, rank0
    assert not (folder / "RUN_LOCK").exists()  # released on the way out


@pytest.mark.slow
def test_save_onto_a_full_disk_says_so_and_exits_within_seconds(tmp_path):
    """A 2 MB file system holds the checkpoint of step 2 but not the one of step 4 (where none can be mounted, the
    writes of step 4 fail with ENOSPC)."""
    with small_tmpfs(tmp_path / "disk", "2m") as disk:
        folder = (disk or tmp_path) / "run"
        opts = tiny(folder, **{"ckpt.checkpoint_every": 2})
        codes, seconds, left = run_until_exit(tmp_path, folder, opts, fault=None if disk else "enospc:4",
                                              after_step=1)
        outputs = [output(tmp_path / "out", r) for r in (0, 1)]
        assert set(codes) == {1} and left == [] and seconds < EXIT_WITHIN_S, (codes, seconds, left, outputs)
        full = [line for text in outputs for line in text.splitlines()
                if line.startswith("train.py stopped at step 4") and "no space left on device: checkpoint step 4 in "
                f"{folder}/4 needs at least " in line]
        assert full and " MB and the file system has " in full[0], outputs
        assert complete_steps(str(folder)) == [2] and resolve_checkpoint(str(folder)) == str(folder / "2"), outputs


@pytest.mark.parametrize("room", ["full", "roomy"])
def test_a_short_write_of_torch_save_onto_a_full_disk_is_named_a_full_disk(tmp_path, room):
    """torch.save onto a full file system raises only ``RuntimeError: ... unexpected pos`` (no OSError in its
    chain): the free space left decides. The same error where the disk has room is not called a full disk."""
    with small_tmpfs(tmp_path / "disk", "64k") if room == "full" else contextlib.nullcontext(tmp_path) as disk:
        if disk is None:
            pytest.skip("no small file system can be mounted here (needs root)")
        try:
            torch.save(torch.zeros(100_000 if room == "full" else 10), disk / "x.pt")
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
        except RuntimeError as exc:
            assert disk_full_in(exc) is None  # what makes the free space the only witness
            # as DCP reports it on every rank: a CheckpointException, which is a BaseException
            reported = CheckpointException("CheckpointException ranks:dict_keys([0])", {0: exc})
            full = disk_full_error(reported, str(disk), needed=400_000, what="checkpoint step 4")
        if room == "full":
            assert isinstance(full, DiskFullError) and "no space left on device: checkpoint step 4 in " in str(full)
        else:
            assert full is None


@pytest.mark.slow
@pytest.mark.parametrize("case", ["parent is a file", "read-only file system", "tensorboard folder"])
def test_a_folder_that_cannot_be_written_stops_the_run_before_it_trains(tmp_path, case):
    (tmp_path / "a_file").write_text("not a folder")
    with small_tmpfs(tmp_path / "ro", "1m", read_only=True) if case == "read-only file system" \
            else contextlib.nullcontext(tmp_path) as base:
        if base is None:
            pytest.skip("no read-only file system can be mounted here (needs root)")
        folder, key = tmp_path / "a_file" / "run", "ckpt.save_ckpt_folder"
        extra = {}
        if case == "read-only file system":
            folder = base / "run"
        elif case == "tensorboard folder":  # only rank 0 writes it: rank 1 must stop too
            folder, key = tmp_path / "run", "monitor.tensorboard_folder"
            extra = {key: str(tmp_path / "a_file" / "tensorboard")}
        codes, seconds, left = run_until_exit(tmp_path, folder, tiny(folder, **extra))
        where = extra.get(key, folder)
        reason = "Read-only file system" if case == "read-only file system" else "Not a directory"
        for rank in (0, 1):
            line = one_message(output(tmp_path / "out", rank), "train.py stopped")
            assert f"before training{' [rank 1]' if rank else ''}: {key} {where} is not writable: {reason}" in line
        assert codes == [1, 1] and left == [] and not metric_steps(folder)
        assert not (folder / "RUN_LOCK").exists()


@pytest.mark.slow
def test_a_disk_too_small_for_one_checkpoint_stops_the_run_before_it_trains(tmp_path):
    with small_tmpfs(tmp_path / "disk", "1m") as disk:
        if disk is None:
            pytest.skip("no small file system can be mounted here (needs root)")
        folder = disk / "run"
        codes, _, left = run_until_exit(tmp_path, folder, tiny(folder), world=1)
        line = one_message(output(tmp_path / "out", 0), "train.py stopped")
        assert f"no space left on device: one checkpoint in {folder} needs at least 1.1 MB" in line, line
        assert codes == [1] and left == [] and not metric_steps(folder)


@pytest.mark.slow
@pytest.mark.parametrize("presses", ["once", "once through torchrun"])
def test_ctrl_c_saves_at_the_next_step_and_exits_130(tmp_path, presses):
    """Ctrl-C signals the whole foreground process group, loader workers too, most likely while the rank waits for
    them (slow samples here, as with video decoding); torchrun also forwards it to its ranks, so one keypress can
    arrive twice within milliseconds: still one request to save."""
    folder = tmp_path / "run"
    procs = start_ranks(tmp_path / "out", 2, tiny(folder), fault="slowdata:0.2")
    try:
        wait_for_step(folder, procs, 2)
        os.killpg(procs[0].pid, signal.SIGINT)
        if presses == "once through torchrun":
            time.sleep(0.05)
            for p in procs:
                p.send_signal(signal.SIGINT)
        assert wait_ranks(procs, 120) == [130, 130]
        assert wait_group_gone(procs[0].pid, 10) == []
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(procs[0].pid, signal.SIGKILL)
    steps = metric_steps(folder)
    assert complete_steps(str(folder)) == [steps[-1]] and steps[-1] < 1000
    log = (folder / "logs" / "rank0.log").read_text()
    assert f"SIGINT (Ctrl-C): saving step {steps[-1]} and stopping" in log and "requeue" not in log
    assert "SIGINT: saving a checkpoint at the end of this step" in output(tmp_path / "out", 0)


@pytest.mark.slow
def test_a_second_ctrl_c_stops_at_once_without_saving(tmp_path):
    """The step after step 3 takes 8 s; Ctrl-C during it asks for a save at its end, a second Ctrl-C 1.5 s later
    stops every process at once."""
    folder = tmp_path / "run"
    procs = start_ranks(tmp_path / "out", 2, tiny(folder), fault="slow:3:8")
    try:
        wait_for_step(folder, procs, 3)
        time.sleep(0.5)
        os.killpg(procs[0].pid, signal.SIGINT)
        time.sleep(1.5)
        os.killpg(procs[0].pid, signal.SIGINT)
        t0 = time.time()
        codes = wait_ranks(procs, 60)
        seconds = time.time() - t0
        assert codes == [130, 130] and seconds < 5, (codes, seconds)
        assert wait_group_gone(procs[0].pid, 10) == []
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(procs[0].pid, signal.SIGKILL)
    assert complete_steps(str(folder)) == [] and metric_steps(folder)[-1] == 3
    line = one_message(output(tmp_path / "out", 0), "train.py stopped")
    assert line == "train.py stopped at step 3: second SIGINT (Ctrl-C): stopped at once, without saving"


@pytest.mark.parametrize("started", ["in the training loop", "without the signals blocked"])
def test_validation_loader_workers_survive_the_stop_signals(tmp_path, started):
    """A pre-emption or Ctrl-C during a validation (or the prediction calibration) reaches its loader workers too.
    The loop starts them with the signals blocked; they ignore them from their start on, which is what protects them
    where the blocked mask is not inherited (workers made by a forkserver or spawn)."""
    cfg = tiny_config(1, tmp_path, **{"data.num_workers": 1, "data.valid_micro_num": 2})
    loader = build_valid_loader(cfg.data, 0, 1, joint=False)
    with running_loader(loader) if started == "in the training loop" else contextlib.nullcontext(iter(loader)) \
            as batches:
        try:
            first = next(batches)
            worker = batches._workers[0]
            for sig in STOP_SIGNALS:
                os.kill(worker.pid, sig)
            time.sleep(0.5)
            assert worker.is_alive()
            rest = list(batches)
        finally:
            stop_loader_workers(batches)
    assert [first["global_crops"].shape[0]] + [b["global_crops"].shape[0] for b in rest] == [2, 2, 2, 2]
    worker.join(timeout=10)
    assert not worker.is_alive()
