"""Process-group setup for the three ways a run is started: srun (--launcher slurm), torchrun (--launcher torch)
and a plain single process. NCCL on GPUs, gloo on CPUs; each rank's device is its local rank.

The rendezvous: under torchrun, torchrun's own (its agent already holds the store at MASTER_ADDR:MASTER_PORT; a
``--port`` is ignored with a notice). Otherwise rank 0 opens a TCP store at the master address and port (MASTER_PORT
when the job set one, else ``--port``) and the other ranks join it. A rendezvous that cannot complete (a rank that
never comes, a port in use, an address no rank can reach) stops within ``rendezvous_timeout_s`` with a message
naming the address and port, instead of waiting for the collective timeout.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Callable, Mapping, Optional

import torch
import torch.distributed as dist

LAUNCHERS = ("slurm", "torch")
DEFAULT_PORT = 29500
DEFAULT_RENDEZVOUS_TIMEOUT_S = 60.0
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
TORCHRUN_MARKER = "TORCHELASTIC_RUN_ID"  # set by torchrun (torch.distributed.run) for every rank it starts


class LaunchError(RuntimeError):
    """The launch environment is incomplete or inconsistent; the message names the variables."""


class RendezvousError(RuntimeError):
    """The ranks could not meet; the message names the address and port and what to check."""


@dataclass(frozen=True)
class DistEnv:
    launcher: str  # "slurm" | "torch" | "single"
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    torchrun: bool = False  # torchrun's agent holds the rendezvous store: the ranks join it (init_method env://)
    notice: Optional[str] = None  # a --port the environment's rendezvous overrides (said once, by rank 0)


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

    launcher None: torchrun's variables when WORLD_SIZE is set, else one local process. The port: a rendezvous the
    environment already set (torchrun's, or MASTER_PORT exported by the job) wins over ``port`` (--port), which is
    then ignored with a notice.
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
        master_port = _int_var(env, "MASTER_PORT", "torch")
        torchrun = TORCHRUN_MARKER in env
        by = "torchrun's rendezvous" if torchrun else "the rendezvous in MASTER_ADDR/MASTER_PORT"
        return _checked(DistEnv("torch", rank, world, local, env["MASTER_ADDR"], master_port, torchrun,
                                _port_notice(port, env["MASTER_ADDR"], master_port, by)))
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
        master_addr = env.get("MASTER_ADDR") or first_host(env[nodelist_var])
        if "MASTER_PORT" in env:
            master_port = _int_var(env, "MASTER_PORT", "slurm")
            notice = _port_notice(port, master_addr, master_port, "MASTER_PORT, set by the job,")
        else:
            master_port, notice = port or DEFAULT_PORT, None
        return _checked(DistEnv("slurm", rank, world, local, master_addr, master_port, notice=notice))
    raise LaunchError(f"--launcher {launcher!r}: expected one of {', '.join(LAUNCHERS)} (or none)")


def _port_notice(port: Optional[int], addr: str, master_port: int, by: str) -> Optional[str]:
    if port is None or port == master_port:
        return None
    return f"--port {port} ignored: {by} is at {addr}:{master_port}"


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
                     device: Optional[str] = None,
                     rendezvous_timeout_s: float = DEFAULT_RENDEZVOUS_TIMEOUT_S) -> DistContext:
    """Detect the environment, pick the device (cuda:local_rank when CUDA is there, else cpu) and, for more than
    one process, meet the other ranks (within ``rendezvous_timeout_s``) and start the process group (NCCL on GPU,
    gloo on CPU) with a collective timeout (``timeout_s``) so that a dead rank fails the job instead of hanging it."""
    env = detect_environment(launcher, port)
    if env.notice and env.rank == 0:
        print(env.notice, file=sys.stderr, flush=True)
    if device is None:
        device = f"cuda:{env.local_rank % max(torch.cuda.device_count(), 1)}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    elif env.world_size > 1:
        torch.set_num_threads(_cpu_threads(env.world_size))
    if env.world_size > 1 and not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", env.master_addr)
        os.environ.setdefault("MASTER_PORT", str(env.master_port))
        backend = "nccl" if dev.type == "cuda" else "gloo"
        timeout = datetime.timedelta(seconds=timeout_s)
        if env.torchrun:
            dist.init_process_group(backend, init_method="env://", rank=env.rank, world_size=env.world_size,
                                    timeout=timeout)
        else:
            # as torch's own tcp:// rendezvous leaves it: once met, the store serves the collectives' set-up (their
            # timeout), its keys under the default group's prefix
            store = _rendezvous(env, rendezvous_timeout_s)
            store.set_timeout(timeout)
            dist.init_process_group(backend, store=dist.PrefixStore("default_pg", store), rank=env.rank,
                                    world_size=env.world_size, timeout=timeout)
    return DistContext(env, dev)


def _cpu_threads(world_size: int) -> int:
    """Ranks sharing a CPU must share its cores (oversubscribed OpenMP threads spin and stall each other): slurm's
    --cpus-per-task, else the cores divided among the ranks of this node."""
    if os.environ.get("SLURM_CPUS_PER_TASK", "").isdigit():
        return max(1, int(os.environ["SLURM_CPUS_PER_TASK"]))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("SLURM_NTASKS_PER_NODE", world_size)))
    return max(1, (os.cpu_count() or 1) // max(local_world, 1))


def _rendezvous(env: DistEnv, timeout_s: float) -> dist.TCPStore:
    """Rank 0 opens the store and waits for the others; they connect to it. Fails within about ``timeout_s``."""
    where = f"{env.master_addr}:{env.master_port}"
    try:
        return dist.TCPStore(env.master_addr, env.master_port, env.world_size, is_master=env.rank == 0,
                             timeout=datetime.timedelta(seconds=timeout_s), wait_for_workers=True)
    except RuntimeError as exc:  # DistStoreError / DistNetworkError
        reason = str(exc).strip().splitlines()[0]
        if env.rank == 0 and ("EADDRINUSE" in reason or "address already in use" in reason):
            hint = (f"port {env.master_port} is in use on this node (another job?): launch with another --port "
                    f"(the slurm scripts: PORT=...)")
        elif env.rank == 0:
            hint = (f"not all {env.world_size} ranks reached rank 0 within {timeout_s:g} s: did every rank start, "
                    f"and can they reach {where}?")
        else:
            hint = (f"rank {env.rank} could not reach rank 0 at {where} within {timeout_s:g} s: is rank 0 running on "
                    f"{env.master_addr}, and is port {env.master_port} open between the nodes?")
        raise RendezvousError(f"rendezvous at {where} ({env.launcher} launcher) failed: {hint} [{reason}]") from None


def destroy_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def messages_of_all_ranks(message: Optional[str]) -> list[str]:
    """Every rank's message (None: nothing to say), sorted and without repeats, on every rank. A collective: a
    failure that one rank finds stops all of them at the same point instead of leaving the others in the next
    collective."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [message] if message else []
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, message)
    return sorted({m for m in gathered if m})
