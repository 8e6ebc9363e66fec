"""Rendezvous: under torchrun the framework uses torchrun's own (the authors' ``--launcher torch --port PORT`` used to
replace it and wait silently for half an hour); a rendezvous that cannot complete stops within its timeout with a
message naming the address and port. And scripts_train/torchrun_train.sh without its optional SEED."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest
from eval_helpers import free_port
from rank_helpers import output, start_ranks, wait_ranks
from train_helpers import tiny_overrides

from internlm.checkpoint.layout import complete_steps
from internlm.initialize.launch import detect_environment

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCHRUN = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29611",
            "TORCHELASTIC_RUN_ID": "none"}
SLURM = {"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_LOCALID": "0", "SLURM_JOB_NODELIST": "gpu-01"}


def test_a_rendezvous_the_environment_set_wins_over_port():
    e = detect_environment("torch", 29544, env=TORCHRUN)
    assert (e.torchrun, e.master_port) == (True, 29611)
    assert e.notice == "--port 29544 ignored: torchrun's rendezvous is at 10.0.0.1:29611"
    manual = detect_environment("torch", 29544, env={k: v for k, v in TORCHRUN.items() if k != "TORCHELASTIC_RUN_ID"})
    assert (manual.torchrun, manual.master_port) == (False, 29611) and "MASTER_ADDR/MASTER_PORT" in manual.notice
    assert detect_environment("torch", 29611, env=TORCHRUN).notice is None  # the same port: nothing to say
    e = detect_environment("slurm", 29544, env=SLURM, first_host=lambda nodes: "gpu-01")
    assert (e.master_addr, e.master_port, e.notice) == ("gpu-01", 29544, None)  # slurm sets no rendezvous
    e = detect_environment("slurm", 29544, env=dict(SLURM, MASTER_PORT="23456"), first_host=lambda nodes: "gpu-01")
    assert (e.master_port, e.notice) == (23456, "--port 29544 ignored: MASTER_PORT, set by the job, is at gpu-01:23456")


def opt_args(folder, **extra) -> list[str]:
    out = []
    for k, v in tiny_overrides(folder, steps=2, micro_num=2, accum=1, **extra):
        out += ["--opt", f"{k}={v!r}"]
    return out


def run(cmd, timeout=240, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **(env or {})))


@pytest.mark.slow
def test_port_under_torchrun_is_ignored_with_a_notice_and_the_run_trains(tmp_path):
    master, other = free_port(), free_port()
    proc = run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={master}",
                "train.py", "--config", "configs/demo/stage1_dino_tiny.py", "--launcher", "torch", "--port", str(other),
                "--device", "cpu", *opt_args(tmp_path / "run")])
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-4000:]
    notices = [line for line in text.splitlines() if f"--port {other} ignored" in line]
    assert notices == [f"--port {other} ignored: torchrun's rendezvous is at 127.0.0.1:{master}"], text[-4000:]
    assert complete_steps(str(tmp_path / "run")) == [2]


@pytest.mark.slow
def test_torchrun_train_sh_takes_an_optional_seed(tmp_path):
    for seed, args in ((0, []), (7, ["7"])):  # without SEED: the config's data.seed (0)
        folder = tmp_path / f"seed{seed}"
        proc = run(["bash", "scripts_train/torchrun_train.sh", "configs/demo/stage1_dino_tiny.py", "1", *args,
                    "--device", "cpu", *opt_args(folder)], env={"MASTER_PORT": str(free_port())})
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
        assert json.load(open(folder / "2" / "config.json"))["data"]["seed"] == seed


@pytest.mark.slow
@pytest.mark.parametrize("case", ["a rank never comes", "rank 0 never comes", "the port is in use"])
def test_a_rendezvous_that_cannot_complete_fails_within_its_timeout_naming_address_and_port(tmp_path, case):
    port = free_port()
    ranks = {"a rank never comes": [0], "rank 0 never comes": [1], "the port is in use": [0]}[case]
    with socket.socket() as busy:
        if case == "the port is in use":
            busy.bind(("0.0.0.0", port))
            busy.listen()
        t0 = time.time()
        procs = start_ranks(tmp_path, 2, tiny_overrides(tmp_path / "run"), args=["--rendezvous_timeout", "5"],
                            port=port, ranks=ranks)
        codes = wait_ranks(procs, 120)
        seconds = time.time() - t0
    text = output(tmp_path, ranks[0])
    where = f"launch error: rendezvous at 127.0.0.1:{port} (torch launcher) failed: "
    expected = {"a rank never comes": "not all 2 ranks reached rank 0 within 5 s",
                "rank 0 never comes": f"rank 1 could not reach rank 0 at 127.0.0.1:{port} within 5 s",
                "the port is in use": f"port {port} is in use on this node (another job?)"}[case]
    assert codes == [1] and f"{where}{expected}" in text, (codes, text[-3000:])
    assert seconds < 60, seconds  # start-up, the 5 s timeout and its retries; without it, the collective's 30 min
