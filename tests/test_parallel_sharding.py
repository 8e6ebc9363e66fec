"""What each parallel mode really holds on each of 2 gloo ranks, measured after a training step: DDP keeps the whole
optimizer state on every rank, ZeRO-1 one share of it per rank, FSDP2 one shard of every parameter and of its
optimizer state (and saves them sharded)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from test_distributed import MODES, free_port
from train_helpers import saved_optimizer_chunks

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def probe(tmp_path, mode: str, *extra: str) -> list[dict]:
    """Run tests/sharding_probe.py on 2 ranks in ``mode`` (``extra``: more of its options); -> each rank's report."""
    port, procs, outs = free_port(), [], []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), PYTHONUNBUFFERED="1")
        outs.append(tmp_path / f"rank{rank}.json")
        procs.append(subprocess.Popen([sys.executable, os.path.join(REPO, "tests", "sharding_probe.py"), "--folder",
                                       str(tmp_path / "run"), "--zero1", repr(MODES[mode]), "--out", str(outs[-1]),
                                       *extra],
                                      env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(log[-3000:] for log in logs)
    reports = [json.loads(o.read_text()) for o in outs]
    assert [r["mode"] for r in reports] == [mode, mode]
    return reports


def state_sizes(reports) -> tuple[int, list[int]]:
    """(elements of all trained parameters, elements of the Adam first moments each rank holds)."""
    total = sum(p["global_numel"] for p in reports[0]["params"].values() if p["trained"])
    return total, [sum(p["exp_avg_local_numel"] for p in r["params"].values()) for r in reports]


def test_ddp_replicates_parameters_and_optimizer_state(tmp_path):
    reports = probe(tmp_path, "ddp")
    total, held = state_sizes(reports)
    assert held == [total, total]
    assert all(p["local_numel"] == p["global_numel"] for r in reports for p in r["params"].values())


def test_zero1_each_rank_holds_only_its_share_of_the_optimizer_state(tmp_path):
    reports = probe(tmp_path, "zero1")
    total, held = state_sizes(reports)
    assert sum(held) == total and all(0 < h < total for h in held), (held, total)
    for name in [n for n, p in reports[0]["params"].items() if p["trained"]]:  # moments on exactly one rank, whole
        owners = [r["params"][name] for r in reports if r["params"][name]["exp_avg_numel"]]
        assert len(owners) == 1 and owners[0]["exp_avg_numel"] == owners[0]["global_numel"], name
    assert all(p["local_numel"] == p["global_numel"] for r in reports for p in r["params"].values())


def test_fsdp_shards_parameters_optimizer_state_and_the_checkpoint(tmp_path):
    reports = probe(tmp_path, "fsdp")
    total, held = state_sizes(reports)
    assert sum(held) == total and all(0 < h < total for h in held), (held, total)
    for name, p0 in reports[0]["params"].items():
        p1 = reports[1]["params"][name]
        assert p0["placements"] == p1["placements"] == ["Shard(0)"], name
        assert p0["local_numel"] + p1["local_numel"] == p0["global_numel"], name
        if p0["trained"]:
            assert (p0["exp_avg_local_numel"], p1["exp_avg_local_numel"]) == (p0["local_numel"], p1["local_numel"])
    assert sum(p["local_numel"] for p in reports[0]["params"].values()) < total
    # saved as it is held: the moments of every parameter with more than one row are stored as two chunks
    chunks = saved_optimizer_chunks(tmp_path / "run" / "1")
    rows = {name: p["global_numel"] for name, p in reports[0]["params"].items()}
    assert chunks and all(len(c) == 2 for fqn, c in chunks.items()
                          if rows[fqn.split(".", 1)[1].rsplit(".", 1)[0]] > 1 and c[0][1][0] > 1)
    sharded = [fqn for fqn, c in chunks.items() if len(c) == 2]
    assert len(sharded) > len(chunks) // 2, (len(sharded), len(chunks))



def test_ddp_buckets_follow_reduce_bucket_size(tmp_path):
    """hybrid_zero_optimizer.reduce_bucket_size is the size of DDP's gradient all-reduce buckets: a 2 MB model
    reduces its gradients in one bucket of 512 MiB, in several of 1 MiB."""
    width = ("--opt", "model.hidden_size=128", "--opt", "teacher.hidden_size=128")
    buckets = {}
    for size in (2**20, 512 * 2**20):
        reports = probe(tmp_path / str(size), "ddp", "--steps", "3", *width, "--opt",
                        f"hybrid_zero_optimizer.reduce_bucket_size={size}")
        buckets[size] = reports[0]["ddp_buckets"]
        assert reports[1]["ddp_buckets"] == buckets[size]
    model_bytes = 4 * sum(p["global_numel"] for p in reports[0]["params"].values() if p["trained"])
    assert model_bytes > 2 * 2**20 and buckets[512 * 2**20] == [sum(buckets[2**20])]
    assert len(buckets[2**20]) >= 2 and max(buckets[2**20]) < 2 * 2**20, buckets
