"""Gradient communication in the run's low precision (parallel.low_precision_comm) on real gloo processes: the DDP
hook's arithmetic (one rounding per gradient, an fp32 sum), and training with it and with FSDP2's
MixedPrecisionPolicy against one process. What only a GPU can check (NCCL's bf16 path, the overlap with the
backward) is in benchmarks/gpu_check.sh's reach only on several GPUs; see docs/training.md."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from comm_hook_worker import rank_gradient
from test_distributed import REPO, check_exit_codes, free_port, launch, metrics, run, wait


def gloo_supports(dtype: torch.dtype) -> bool:
    """gloo's low-precision collectives (bf16 needs a recent torch); three tries, each on a fresh port (another
    test may take the port between free_port and the probe)."""
    for _ in range(3):
        code = ("import torch, torch.distributed as dist\n"
                "dist.init_process_group('gloo', init_method='tcp://127.0.0.1:%d', rank=0, world_size=1)\n"
                f"t = torch.ones(4, dtype=torch.{str(dtype).split('.')[-1]})\n"
                "dist.all_to_all_single(torch.empty_like(t), t)\n"
                "dist.all_gather_into_tensor(torch.empty_like(t), t)\n" % free_port())
        if subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120).returncode == 0:
            return True
    return False


def expected(world: int, per_node: int, dtype: torch.dtype, n: int = 1001) -> torch.Tensor:
    """The hook's result: fp32 sum inside each node, each node's sum / world rounded to ``dtype`` once, the nodes'
    values summed in fp32 and that sum rounded once."""
    grads = torch.stack([rank_gradient(r, n) for r in range(world)])  # (world, n)
    per_node_sums = grads.view(world // per_node, per_node, n).sum(1)  # fp32
    return (per_node_sums / world).to(dtype).float().sum(0).to(dtype).float()


@pytest.mark.parametrize("dtype, per_node", [(torch.float16, 1), (torch.float16, 2), (torch.bfloat16, 2)])
def test_hook_rounds_once_and_sums_in_fp32(tmp_path, dtype, per_node):
    if not gloo_supports(dtype):
        pytest.skip(f"this torch's gloo has no {dtype} all_to_all / all_gather; a GPU run (NCCL) checks it")
    world, port = 4, free_port()
    procs = []
    for rank in range(world):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        log = open(tmp_path / f"launch_rank{rank}.log", "w")
        procs.append(subprocess.Popen([sys.executable, os.path.join(REPO, "tests", "comm_hook_worker.py"),
                                       str(tmp_path), str(dtype).split(".")[-1], str(per_node)], env=env, cwd=REPO,
                                      stdout=log, stderr=subprocess.STDOUT))
    check_exit_codes(str(tmp_path), wait(procs, timeout=180))
    got = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    want = expected(world, per_node, dtype)
    for g in got:
        torch.testing.assert_close(g, want, rtol=0, atol=0)
    grads = torch.stack([rank_gradient(r, 1001) for r in range(world)])
    # within two roundings of the mean, relative to the magnitudes summed
    assert ((got[0] - grads.mean(0)).abs() <= 2 * torch.finfo(dtype).eps * grads.abs().mean(0)).all()
    if dtype == torch.float16 and per_node == 1:
        assert got[0][0] == 1 + 2 ** -9  # rounding at each addition would give 1.0


BF16 = {"model.dtype": "torch.bfloat16", "teacher.dtype": "torch.bfloat16"}


@pytest.fixture(scope="module")
def one_rank_bf16(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("one_rank_bf16"))
    run(folder, 1, extra=BF16, stop_after=2)
    return folder


@pytest.mark.parametrize("mode", ["ddp", "fsdp", "ddp-fused"])
def test_low_precision_comm_trains_like_one_process(tmp_path, one_rank_bf16, mode):
    """bf16 training on 2 gloo ranks, each its own node (so DDP's gradients take the low-precision hook; FSDP2
    gathers bf16 parameters and reduces fp32 gradients; with gradient accumulation fusion the blocks' buckets take
    the same low-precision reduction): the losses of the first steps are one process's within bf16 rounding."""
    if not gloo_supports(torch.bfloat16):
        pytest.skip("this torch's gloo has no bf16 collectives; a GPU run (NCCL) checks it")
    folder = str(tmp_path / mode)
    extra = dict(BF16, **{"parallel.grad_accumulation_fusion": True} if mode == "ddp-fused" else {})
    check_exit_codes(folder, wait(launch(folder, 2, mode=mode.split("-")[0], stop_after=2, extra=extra,
                                         local_world_size=1)))
    log = open(os.path.join(folder, "logs", "rank0.log")).read()
    if mode.startswith("ddp"):
        assert "DDP gradients: fp32 inside each node of 1 ranks, bfloat16 between the 2 nodes" in log
    if mode == "ddp-fused":
        assert "gradient accumulation fusion: 14 block weights" in log
    reference, got = metrics(one_rank_bf16), metrics(folder)
    for step in range(1, 3):
        for key in ("loss", "loss_rep", "loss_pred", "loss_act"):
            assert got[step][key] == pytest.approx(reference[step][key], rel=2e-2), (step, key)
