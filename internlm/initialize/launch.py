"""Process-group setup for the three ways a run is started: srun (--launcher slurm), torchrun (--launcher torch)
and a plain single process. NCCL on GPUs, gloo on CPUs; each rank's device is its local rank."""

from __future__ import annotations

import datetime
import os
import subprocess
from dataclasses import dataclass
from typing import Callable, Mapping, Optional

import torch
import torch.distributed as dist

LAUNCHERS = ("slurm", "torch")
DEFAULT_PORT = 29500
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class LaunchError(RuntimeError):
    """The launch environment is incomplete or inconsistent; the message names the variables."""


@dataclass(frozen=True)
class DistEnv:
    launcher: str  # "slurm" | "torch" | "single"
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int


def _scontrol_first_host(nodelist: str) -> str:
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                             check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise LaunchError(f"--launcher slurm: 'scontrol show hostnames {nodelist}' failed: {exc}") from exc
    hosts = out.split()
    if not hosts:
        raise LaunchError(f"--launcher slurm: scontrol returned no host for SLURM_JOB_NODELIST={nodelist!r}")
    return hosts[0]


def _int_var(env: Mapping[str, str], name: str, launcher: str) -> int:
    try:
        return int(env[name])
    except ValueError as exc:
        raise LaunchError(f"--launcher {launcher}: {name}={env[name]!r} is not an integer") from exc


def detect_environment(launcher: Optional[str], port: Optional[int] = None, env: Mapping[str, str] = os.environ,
                       first_host: Callable[[str], str] = _scontrol_first_host) -> DistEnv:
    """Rank, world size, local rank and master address of this process.

    launcher None: torchrun's variables when WORLD_SIZE is set, else one local process.
    """
    if launcher is None:
        launcher = "torch" if "WORLD_SIZE" in env else "single"
    if launcher == "single":
        return DistEnv("single", 0, 1, 0, "127.0.0.1", port or DEFAULT_PORT)
    if launcher == "torch":
        missing = [v for v in TORCHRUN_VARS if v not in env]
        if missing:
            raise LaunchError(f"--launcher torch: {', '.join(missing)} not set "
                              f"(torchrun sets {', '.join(TORCHRUN_VARS)});"
                              " start with torchrun, or drop --launcher for a single process")
        rank, world = _int_var(env, "RANK", "torch"), _int_var(env, "WORLD_SIZE", "torch")
        local = _int_var(env, "LOCAL_RANK", "torch")
        master_port = port or _int_var(env, "MASTER_PORT", "torch")
        return _checked(DistEnv("torch", rank, world, local, env["MASTER_ADDR"], master_port))
    if launcher == "slurm":
        world_var = "SLURM_NTASKS" if "SLURM_NTASKS" in env else "SLURM_NPROCS"
        nodelist_var = "SLURM_JOB_NODELIST" if "SLURM_JOB_NODELIST" in env else "SLURM_NODELIST"
        needed = ("SLURM_PROCID", world_var, "SLURM_LOCALID", nodelist_var)
        missing = [v for v in needed if v not in env]
        if missing:
            raise LaunchError(f"--launcher slurm: {', '.join(missing)} not set; start the job step with srun"
                              " (these are set by srun for every task)")
        rank, world = _int_var(env, "SLURM_PROCID", "slurm"), _int_var(env, world_var, "slurm")
        local = _int_var(env, "SLURM_LOCALID", "slurm")
        master_port = port or (int(env["MASTER_PORT"]) if "MASTER_PORT" in env else DEFAULT_PORT)
        master_addr = env.get("MASTER_ADDR") or first_host(env[nodelist_var])
        return _checked(DistEnv("slurm", rank, world, local, master_addr, master_port))
    raise LaunchError(f"--launcher {launcher!r}: expected one of {', '.join(LAUNCHERS)} (or none)")


def _checked(e: DistEnv) -> DistEnv:
    if not 0 <= e.rank < e.world_size:
        raise LaunchError(f"--launcher {e.launcher}: rank {e.rank} is outside world size {e.world_size}")
    if e.local_rank < 0:
        raise LaunchError(f"--launcher {e.launcher}: local rank {e.local_rank} is negative")
    return e


@dataclass(frozen=True)
class DistContext:
    env: DistEnv
    device: torch.device

    @property
    def rank(self) -> int:
        return self.env.rank

    @property
    def world_size(self) -> int:
        return self.env.world_size

    @property
    def is_distributed(self) -> bool:
        return self.env.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.env.rank == 0


def init_distributed(launcher: Optional[str] = None, port: Optional[int] = None, timeout_s: float = 1800.0,
                     device: Optional[str] = None) -> DistContext:
    """Detect the environment, pick the device (cuda:local_rank when CUDA is there, else cpu) and, for more than
    one process, start the process group (NCCL on GPU, gloo on CPU) with a timeout so that a dead rank fails the
    job instead of hanging it."""
    env = detect_environment(launcher, port)
    if device is None:
        device = f"cuda:{env.local_rank % max(torch.cuda.device_count(), 1)}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    elif env.world_size > 1:
        # Ranks sharing a CPU must share its cores; oversubscribed OpenMP threads spin and stall each other.
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("SLURM_NTASKS_PER_NODE", env.world_size)))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(local_world, 1)))
    if env.world_size > 1 and not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", env.master_addr)
        os.environ.setdefault("MASTER_PORT", str(env.master_port))
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend, init_method=f"tcp://{env.master_addr}:{env.master_port}", rank=env.rank,
                                world_size=env.world_size, timeout=datetime.timedelta(seconds=timeout_s))
    return DistContext(env, dev)


def destroy_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
